package rig

import "strings"

// shellQuote quotes s as one word for a POSIX shell (busybox ash included).
// Words made only of safe characters are left as they are; others are put in
// single quotes, where each embedded single quote ends the quoted part, is
// escaped with a backslash and starts a new quoted part.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if strings.Trim(s, shellSafe) == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

const shellSafe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+.,/:@%"

// shellJoin quotes each word and joins them with spaces.
func shellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return strings.Join(q, " ")
}
