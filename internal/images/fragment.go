package images

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Option is one line of a kernel config fragment: CONFIG_<Name>=<Value>,
// or "# CONFIG_<Name> is not set", which is Value "n".
type Option struct {
	Name  string // without the CONFIG_ prefix
	Value string // y, m, n, a number or a quoted string
	Line  int    // 1-based line in the fragment
	File  string // the fragment's path, when known (for messages)
}

// String returns the option as a .config line.
func (o Option) String() string {
	if o.Value == "n" {
		return "# CONFIG_" + o.Name + " is not set"
	}
	return "CONFIG_" + o.Name + "=" + o.Value
}

var (
	setLine   = regexp.MustCompile(`^CONFIG_([A-Za-z0-9_]+)=(.*)$`)
	unsetLine = regexp.MustCompile(`^# CONFIG_([A-Za-z0-9_]+) is not set$`)
	valueRe   = regexp.MustCompile(`^(y|m|n|-?[0-9]+|0x[0-9a-fA-F]+|"([^"\\]|\\.)*")$`)
)

// ParseFragment parses a kernel config fragment: CONFIG_X=value lines,
// "# CONFIG_X is not set" lines, other comments and blank lines. It fails
// on any other line, on a malformed value and on a symbol given twice.
func ParseFragment(data []byte) ([]Option, error) {
	var opts []Option
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		var o Option
		if m := unsetLine.FindStringSubmatch(line); m != nil {
			o = Option{Name: m[1], Value: "n", Line: n}
		} else if m := setLine.FindStringSubmatch(line); m != nil {
			if !valueRe.MatchString(m[2]) {
				return nil, fmt.Errorf("line %d: CONFIG_%s: bad value %q", n, m[1], m[2])
			}
			o = Option{Name: m[1], Value: m[2], Line: n}
		} else if line == "" || strings.HasPrefix(line, "#") {
			continue
		} else {
			return nil, fmt.Errorf("line %d: want CONFIG_X=value, \"# CONFIG_X is not set\" or a comment, got %q", n, line)
		}
		if prev, ok := seen[o.Name]; ok {
			return nil, fmt.Errorf("line %d: CONFIG_%s already set on line %d", n, o.Name, prev)
		}
		seen[o.Name] = n
		opts = append(opts, o)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(opts) == 0 {
		return nil, fmt.Errorf("no CONFIG_ options")
	}
	return opts, nil
}

// MergeFragments merges parsed fragments in order, as merge_config.sh
// does: an option keeps its first position, and a later fragment's value
// for a symbol replaces an earlier one's.
func MergeFragments(frags ...[]Option) []Option {
	var out []Option
	at := map[string]int{}
	for _, f := range frags {
		for _, o := range f {
			if i, ok := at[o.Name]; ok {
				out[i] = o
				continue
			}
			at[o.Name] = len(out)
			out = append(out, o)
		}
	}
	return out
}

// where names an option's line for messages: "line N", or "FILE line N".
func (o Option) where() string {
	if o.File == "" {
		return fmt.Sprintf("line %d", o.Line)
	}
	return fmt.Sprintf("%s line %d", o.File, o.Line)
}

// parseDotConfig reads the symbols of a generated .config: name to value,
// "n" for those that are not set.
func parseDotConfig(data []byte) map[string]string {
	vals := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := unsetLine.FindStringSubmatch(line); m != nil {
			vals[m[1]] = "n"
		} else if m := setLine.FindStringSubmatch(line); m != nil {
			vals[m[1]] = m[2]
		}
	}
	return vals
}

// Dropped returns the fragment options that the final .config does not
// honour: a set option whose value differs or is missing, or an unset one
// that ended up set. Each comes with what the .config has instead.
func Dropped(frag []Option, dotConfig []byte) []string {
	final := parseDotConfig(dotConfig)
	var out []string
	for _, o := range frag {
		got, ok := final[o.Name]
		if o.Value == "n" {
			if ok && got != "n" {
				out = append(out, fmt.Sprintf("%s (%s): the .config has CONFIG_%s=%s", o, o.where(), o.Name, got))
			}
			continue
		}
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s (%s): not in the .config (unmet dependency?)", o, o.where()))
		case got != o.Value:
			have := "CONFIG_" + o.Name + "=" + got
			if got == "n" {
				have = "it not set"
			}
			out = append(out, fmt.Sprintf("%s (%s): the .config has %s (unmet dependency?)", o, o.where(), have))
		}
	}
	return out
}
