package ocirt

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
)

// Logger writes a runtime's log (--log) as runc does: with the json
// format one object a line, {"level":"error","msg":"...","time":"..."},
// which conmon and containerd's shim read back for the error of a failed
// command; with the text format, logrus's key=value line. A nil *Logger,
// or one with a nil writer, logs nothing.
type Logger struct {
	mu    sync.Mutex
	w     io.Writer
	json  bool
	debug bool
	now   func() time.Time
}

// NewLogger logs to w in the json format (else text), debug lines only
// with debug.
func NewLogger(w io.Writer, jsonFormat, debug bool) *Logger {
	return &Logger{w: w, json: jsonFormat, debug: debug, now: time.Now}
}

// Errorf logs an error.
func (l *Logger) Errorf(format string, args ...any) { l.log("error", format, args...) }

// Warnf logs a warning.
func (l *Logger) Warnf(format string, args ...any) { l.log("warning", format, args...) }

// Debugf logs a debug line, with --debug.
func (l *Logger) Debugf(format string, args ...any) {
	if l != nil && l.debug {
		l.log("debug", format, args...)
	}
}

func (l *Logger) log(level, format string, args ...any) {
	if l == nil || l.w == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	t := l.now().Format(time.RFC3339Nano)
	var line []byte
	if l.json {
		line, _ = json.Marshal(struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Time  string `json:"time"`
		}{level, msg, t})
	} else {
		line = []byte(fmt.Sprintf("time=%q level=%s msg=%s", t, level, strconv.Quote(msg)))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(append(line, '\n'))
}
