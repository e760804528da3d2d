package main

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

const (
	stdinWriteDefault = 10 * time.Second // how long a write_stdin waits for the process to read
	stdinWriteMax     = 600 * time.Second
)

// One write_stdin per process at a time: each sets the deadline of the one stdin file, and a second
// would clear the first's (which could then block for ever on a process that does not read).
var (
	stdinBusyMu sync.Mutex
	stdinBusy   = map[*Proc]bool{}
)

func claimStdin(p *Proc) bool {
	stdinBusyMu.Lock()
	defer stdinBusyMu.Unlock()
	if stdinBusy[p] {
		return false
	}
	stdinBusy[p] = true
	return true
}

func releaseStdin(p *Proc) {
	stdinBusyMu.Lock()
	delete(stdinBusy, p)
	stdinBusyMu.Unlock()
}

// stdinWriteReply is the process's info and how many of the bytes sent reached its stdin.
type stdinWriteReply struct {
	procInfo
	Written int64 `json:"written"`
}

// writeStdinFrames copies the DATA frames that follow a write_stdin request to the process's
// stdin, bytes as they are (NUL, invalid UTF-8). A process that does not read them within the
// timeout leaves the rest unwritten: the reply counts what went, and stdin then stays open even
// if eof was asked, so the caller can send the rest. The frames not written are drained by serveOne.
func writeStdinFrames(c *conn, p *Proc, up *upload, eof bool, timeout *float64) error {
	p.mu.Lock()
	target := p.master
	if target == nil {
		target = p.stdin
	}
	p.mu.Unlock()
	if target == nil {
		return conflict("process %s has no open stdin", p.id)
	}
	if !claimStdin(p) {
		return conflict("another write to process %s's stdin is in progress", p.id)
	}
	defer releaseStdin(p)
	wait := stdinWriteDefault
	if timeout != nil && *timeout > 0 {
		wait = time.Duration(min64f(*timeout, stdinWriteMax.Seconds()) * float64(time.Second))
	}
	target.SetWriteDeadline(time.Now().Add(wait))
	defer target.SetWriteDeadline(time.Time{})
	var written int64
	complete := true
	buf := make([]byte, chunkSize)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			w, werr := target.Write(buf[:n])
			written += int64(w)
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				complete = false
				break
			}
			if werr != nil {
				return conflict("process %s has closed its stdin (after %d bytes)", p.id, written)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if eof && complete {
		closeStdin(p)
	}
	c.sendJSON(frameReply, stdinWriteReply{p.info(), written})
	return nil
}

func min64f(a, b float64) float64 {
	if a < b {
		return a
	}
	return b
}
