package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
)

// Frames are type:u8 length:u32 payload, as runtimes/agent_client.py on the host reads them.
const (
	frameReq byte = iota + 1
	frameStdout
	frameStderr
	frameExit
	frameStdin
	frameEOF
	frameSignal
	frameResize
	frameData
	frameEnd
	frameReply
	frameError
	// frameGap {"from": a, "to": b} comes before output that starts at b when the reader was at a:
	// the output between was dropped from the buffer before it could be sent.
	frameGap
)

const (
	chunkSize = 65536
	// The host is the only peer, but a request is still read into memory: bound it.
	maxFrame = 64 << 20
)

var errFrameTooLarge = errors.New("frame too large")

type conn struct {
	c   net.Conn
	wmu sync.Mutex
}

func (c *conn) send(kind byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bufs := net.Buffers{hdr[:], payload}
	_, err := bufs.WriteTo(c.c)
	return err
}

func (c *conn) sendJSON(kind byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.send(kind, data)
}

func (c *conn) recv() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		return 0, nil, err
	}
	size := binary.BigEndian.Uint32(hdr[1:])
	if size > maxFrame {
		return 0, nil, errFrameTooLarge
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(c.c, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

// upload is the byte stream of DATA frames until END that write and tar_put read.
type upload struct {
	c   *conn
	buf []byte
	eof bool
}

func (u *upload) Read(p []byte) (int, error) {
	for len(u.buf) == 0 {
		if u.eof {
			return 0, io.EOF
		}
		kind, payload, err := u.c.recv()
		if err != nil {
			u.eof = true
			return 0, io.ErrUnexpectedEOF
		}
		if kind == frameEnd {
			u.eof = true
			continue
		}
		u.buf = payload
	}
	n := copy(p, u.buf)
	u.buf = u.buf[n:]
	return n, nil
}

// drain reads what the host still sends, so that it gets the reply rather than a reset
// connection when an upload is refused midway.
func (u *upload) drain() {
	for !u.eof {
		u.buf = nil
		kind, _, err := u.c.recv()
		if err != nil || kind == frameEnd {
			u.eof = true
		}
	}
	u.buf = nil
}

// frameWriter turns writes into DATA frames.
type frameWriter struct{ c *conn }

func (w frameWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.c.send(frameData, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
