package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Dialer opens a connection to one of the agent's ports.
type Dialer func(ctx context.Context, port uint32) (net.Conn, error)

// ErrRefused is the error of a HybridDialer connection the far side
// closed without accepting it: nothing listens on the port (yet).
var ErrRefused = errors.New("connection refused by the guest")

// HybridDialer dials the agent through a Unix socket that speaks
// Firecracker's hybrid vsock handshake: capsule's --vsock socket (or
// capsule-agent's --listen socket in tests). It writes "CONNECT <port>\n"
// and reads "OK <host-port>\n"; a socket closed instead is ErrRefused,
// and so is a socket that does not exist yet or that nothing listens on.
// The handshake is bounded by ctx.
func HybridDialer(path string) Dialer {
	return func(ctx context.Context, port uint32) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("vsock port %d through %s: %w (%w)", port, path, ErrRefused, err)
		}
		if err != nil {
			return nil, err
		}
		if err := hybridHandshake(ctx, c, port); err != nil {
			c.Close()
			return nil, fmt.Errorf("vsock port %d through %s: %w", port, path, err)
		}
		return c, nil
	}
}

// hybridHandshake writes the CONNECT line and reads the OK line, a byte
// at a time so that no byte of the stream is read with it.
func hybridHandshake(ctx context.Context, c net.Conn, port uint32) error {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return ctxErr(ctx, err)
	}
	var line []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			if len(line) == 0 && ctx.Err() == nil {
				return ErrRefused
			}
			return ctxErr(ctx, err)
		}
		if one[0] == '\n' {
			break
		}
		if len(line) >= 32 {
			return errors.New("answer to CONNECT too long")
		}
		line = append(line, one[0])
	}
	arg, ok := strings.CutPrefix(string(line), "OK ")
	if _, err := strconv.ParseUint(arg, 10, 32); !ok || err != nil {
		return fmt.Errorf("want OK <port> in answer to CONNECT, got %q", line)
	}
	if !stop() {
		return ctx.Err() // the deadline may already be set
	}
	return nil
}

// ctxErr is ctx's error when ctx is done (a deadline set by it made err),
// else err.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
