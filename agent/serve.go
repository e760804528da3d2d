package main

import (
	"encoding/json"
	"fmt"
	"syscall"
	"time"
)

type request struct {
	Op string `json:"op"`
	spawnRequest
	Offset      *int64  `json:"offset"`
	Follow      *bool   `json:"follow"`
	Signal      *int    `json:"signal"`
	Data        *string `json:"data"`
	EOF         bool    `json:"eof"`
	Path        string  `json:"path"`
	Source      string  `json:"source"`
	Destination string  `json:"destination"`
	Mode        *uint32 `json:"mode"`
	Parents     bool    `json:"parents"`
	Recursive   bool    `json:"recursive"`
	Limit       int     `json:"limit"`
	After       *string `json:"after"`
}

// fileOps bounds the requests that make blocking file system calls at once: each such call holds
// an OS thread, and threads were reserved at start (see threads.go) for a sandbox at its pids limit.
var fileOps = make(chan struct{}, fileOpSlots)

// serve answers requests on one connection, one after another: the host keeps connections open
// and sends its next request once the last answer is complete. A connection that ended any other
// way (an error, a hang-up, an attachment not closed with END) is not read again.
func serve(c *conn) {
	defer c.c.Close()
	for serveOne(c) {
	}
}

func serveOne(c *conn) (again bool) {
	defer func() {
		if r := recover(); r != nil {
			c.sendJSON(frameError, map[string]any{"code": "INTERNAL", "message": fmt.Sprint(r)})
			again = false
		}
	}()
	kind, payload, err := c.recv()
	if err != nil || kind != frameReq {
		return false
	}
	var req request
	if err := json.Unmarshal(payload, &req); err != nil {
		c.sendJSON(frameError, (&agentError{Code: "BAD_REQUEST", Message: "bad request: " + err.Error(), HasField: true}).payload())
		return false
	}
	var up *upload
	if req.Op == opWrite || req.Op == opTarPut || req.Op == opWriteStdin {
		up = &upload{c: c}
	}
	if err := dispatch(c, &req, up); err != nil {
		// An upload refused midway (bad path, hostile archive) still reads the host's remaining
		// frames before answering, so the host gets the error rather than a broken pipe.
		if up != nil {
			up.drain()
		}
		e := osError(err, "")
		c.sendJSON(frameError, e.(*agentError).payload())
		return false
	}
	if up != nil {
		up.drain() // what follows an archive's end: the next frame must be a request
	}
	return !c.done
}

func dispatch(c *conn, req *request, up *upload) error {
	switch req.Op {
	case opSpawn:
		env := envList(req.Env)
		p, err := spawn(&req.spawnRequest, env)
		if err != nil {
			return err
		}
		if err := c.sendJSON(frameReply, p.info()); err != nil {
			return nil
		}
		if req.Attach {
			attach(p, c, 0, true, false)
		}
	case opAttach:
		p, err := lookup(derefString(req.ID))
		if err != nil {
			return err
		}
		var offset int64
		if req.Offset != nil {
			offset = *req.Offset
		}
		attach(p, c, offset, req.Follow == nil || *req.Follow, true)
	case opList:
		c.sendJSON(frameReply, listProcs())
	case opStatus:
		p, err := lookup(derefString(req.ID))
		if err != nil {
			return err
		}
		c.sendJSON(frameReply, p.info())
	case opSignal:
		p, err := lookup(derefString(req.ID))
		if err != nil {
			return err
		}
		if req.Signal == nil {
			return badField("signal", "a signal number is required")
		}
		killTree(p.pid, syscall.Signal(*req.Signal))
		c.sendJSON(frameReply, p.info())
	case opStdin:
		p, err := lookup(derefString(req.ID))
		if err != nil {
			return err
		}
		if req.Data != nil && *req.Data != "" {
			if err := writeStdin(p, []byte(*req.Data)); err != nil {
				return err
			}
		}
		if req.EOF {
			closeStdin(p)
		}
		c.sendJSON(frameReply, p.info())
	case opWriteStdin:
		p, err := lookup(derefString(req.ID))
		if err != nil {
			return err
		}
		return writeStdinFrames(c, p, up, req.EOF, req.Timeout)
	case opWaitEntrypoint:
		c.done = true // its reader goroutine may still hold the connection
		waitEntrypoint(c)
	case opStat:
		info, err := statOf(req.Path, nil)
		if err != nil {
			return err
		}
		c.sendJSON(frameReply, info)
	default:
		if !isFileOp(req.Op) {
			return &agentError{Code: "BAD_REQUEST", Message: "unknown op " + req.Op}
		}
		fileOps <- struct{}{}
		defer func() { <-fileOps }()
		return fileOp(c, req, up)
	}
	return nil
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// attach sends a process's output from offset on; with follow, until it ends. Meanwhile it takes
// stdin, resize and signal frames from the host. After the EXIT frame the host sends END, which
// ends the control reader cleanly: only then may the connection carry another request.
func attach(p *Proc, c *conn, offset int64, follow, announce bool) {
	c.done = true // until the attachment ends cleanly
	p.mu.Lock()
	pos := max64(offset, p.base)
	p.mu.Unlock()
	if announce { // where the output sent starts: older output may have been dropped
		if c.sendJSON(frameReply, map[string]int64{"offset": pos}) != nil {
			return
		}
	} else if pos > offset {
		if c.sendJSON(frameGap, map[string]int64{"from": offset, "to": pos}) != nil {
			return
		}
	}
	gone := make(chan struct{})
	ended := false // the host sent END
	go control(p, c, gone, &ended)
	for {
		p.mu.Lock()
		for follow && !p.doneLocked() && p.size <= pos {
			ch, done := p.changed, p.hasEnded
			p.mu.Unlock()
			if !p.waitChange(ch, done, gone) {
				return
			}
			p.mu.Lock()
		}
		select {
		case <-gone:
			p.mu.Unlock()
			return
		default:
		}
		pending := p.pendingLocked(pos)
		finished := p.doneLocked()
		p.mu.Unlock()
		for _, ch := range pending {
			if ch.off > pos { // dropped from the buffer before it was sent: say so, offsets stay real
				if c.sendJSON(frameGap, map[string]int64{"from": pos, "to": ch.off}) != nil {
					return
				}
				pos = ch.off
			}
			if c.send(ch.kind, ch.data[pos-ch.off:]) != nil {
				return
			}
			pos = ch.off + int64(len(ch.data))
		}
		if finished || !follow {
			info := p.info()
			info.Offset = &pos
			sent := c.sendJSON(frameExit, info) == nil
			if finished {
				p.closeMaster() // a terminal's pty goes with its process
			}
			if sent {
				<-gone
				c.done = !ended
			}
			return
		}
	}
}

// control reads the frames the host sends while attached; a bad or late one is dropped. END (sent
// by the host once it has the EXIT) or a hang-up closes gone, so that the attachment ends too.
func control(p *Proc, c *conn, gone chan struct{}, ended *bool) {
	defer close(gone)
	for {
		kind, payload, err := c.recv()
		if err != nil {
			return
		}
		switch kind {
		case frameEnd:
			*ended = true
			return
		case frameStdin:
			writeStdin(p, payload)
		case frameEOF:
			closeStdin(p)
		case frameResize:
			var size struct{ Rows, Cols int }
			p.mu.Lock()
			master := p.master
			p.mu.Unlock()
			if master != nil && json.Unmarshal(payload, &size) == nil {
				setSize(master, size.Rows, size.Cols)
				syscall.Kill(-p.pid, syscall.SIGWINCH)
			}
		case frameSignal:
			var sig struct{ Signal int }
			if json.Unmarshal(payload, &sig) == nil {
				killTree(p.pid, syscall.Signal(sig.Signal))
			}
		}
	}
}

// waitEntrypoint answers when the entrypoint has ended and its output is in the log, or ends when
// the host hangs up (a restarted server asks anew).
func waitEntrypoint(c *conn) {
	if c.sendJSON(frameReply, map[string]bool{"waiting": true}) != nil {
		return
	}
	hungUp := make(chan struct{})
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := c.c.Read(buf); err != nil {
				close(hungUp)
				return
			}
		}
	}()
	select {
	case <-entryDone:
	case <-hungUp:
		return
	}
	p, err := lookup("entrypoint")
	if err != nil {
		return
	}
	if !p.waitDone(hungUp) {
		return
	}
	select { // its last output reaches the log before the host tears down
	case <-logCaughtUp:
	case <-hungUp:
		return
	case <-time.After(5 * time.Second):
	}
	c.sendJSON(frameReply, p.info())
}
