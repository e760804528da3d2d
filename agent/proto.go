package main

import (
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The protocol's numbers and names come from protocol.json, the one definition the host's
// src/sandboxd/agent/protocol.py is tested against; `sandboxd-agent --protocol` prints it.
//
//go:embed protocol.json
var protocolJSON []byte

type protocolDef struct {
	Version int              `json:"version"`
	Frames  map[string]byte  `json:"frames"`
	Ops     []string         `json:"ops"`
	Errors  []string         `json:"errors"`
	Limits  map[string]int64 `json:"limits"`
}

// Frames are type:u8 length:u32 payload.
var (
	frameReq, frameStdout, frameStderr, frameExit, frameStdin, frameEOF, frameSignal byte
	frameResize, frameData, frameEnd, frameReply, frameError                         byte
	// frameGap {"from": a, "to": b} comes before output that starts at b when the reader was at a:
	// the output between was dropped from the buffer before it could be sent.
	frameGap byte
	// frameAuth carries the token, first on every connection of the TCP listener.
	frameAuth byte
)

var (
	chunkSize int
	// The host is the only peer, but a request is still read into memory: bound it.
	maxFrame    uint32
	minToken    int
	maxToken    int
	authTimeout time.Duration
)

// The ops this agent serves, named once; loadProtocol checks them against protocol.json.
const (
	opSpawn          = "spawn"
	opAttach         = "attach"
	opList           = "list"
	opStatus         = "status"
	opSignal         = "signal"
	opStdin          = "stdin"
	opWriteStdin     = "write_stdin"
	opWaitEntrypoint = "wait_entrypoint"
	opStat           = "stat"
	opRead           = "read"
	opWrite          = "write"
	opListDir        = "list_dir"
	opMkdir          = "mkdir"
	opRemove         = "remove"
	opMove           = "move"
	opTarGet         = "tar_get"
	opTarPut         = "tar_put"
)

var servedOps = []string{opSpawn, opAttach, opList, opStatus, opSignal, opStdin, opWriteStdin, opWaitEntrypoint, opStat,
	opRead, opWrite, opListDir, opMkdir, opRemove, opMove, opTarGet, opTarPut}

func init() {
	if err := loadProtocol(); err != nil {
		panic("sandboxd agent: protocol.json: " + err.Error())
	}
}

// loadProtocol sets the frame kinds and limits from protocol.json and refuses a definition that
// names an op this agent does not serve (or the reverse): the build then fails its first run.
func loadProtocol() error {
	var def protocolDef
	if err := json.Unmarshal(protocolJSON, &def); err != nil {
		return err
	}
	frames := map[string]*byte{
		"req": &frameReq, "stdout": &frameStdout, "stderr": &frameStderr, "exit": &frameExit,
		"stdin": &frameStdin, "eof": &frameEOF, "signal": &frameSignal, "resize": &frameResize,
		"data": &frameData, "end": &frameEnd, "reply": &frameReply, "error": &frameError,
		"gap": &frameGap, "auth": &frameAuth,
	}
	if len(frames) != len(def.Frames) {
		return fmt.Errorf("%d frame kinds, the agent knows %d", len(def.Frames), len(frames))
	}
	for name, ptr := range frames {
		kind, ok := def.Frames[name]
		if !ok || kind == 0 {
			return fmt.Errorf("no frame kind %q", name)
		}
		*ptr = kind
	}
	served := map[string]bool{}
	for _, op := range servedOps {
		served[op] = true
	}
	if len(def.Ops) != len(served) {
		return fmt.Errorf("%d ops, the agent serves %d", len(def.Ops), len(served))
	}
	for _, op := range def.Ops {
		if !served[op] {
			return fmt.Errorf("op %q is not served", op)
		}
	}
	limit := func(name string) int64 {
		if v, ok := def.Limits[name]; ok && v > 0 {
			return v
		}
		panic("sandboxd agent: protocol.json: no limit " + name)
	}
	if limit("header_size") != 5 {
		return errors.New("the header is type:u8 length:u32")
	}
	chunkSize = int(limit("chunk"))
	maxFrame = uint32(limit("max_frame"))
	minToken, maxToken = int(limit("min_token")), int(limit("max_token"))
	authTimeout = time.Duration(limit("auth_timeout_ms")) * time.Millisecond
	return nil
}

var errFrameTooLarge = errors.New("frame too large")

type conn struct {
	c   net.Conn
	wmu sync.Mutex
	// done: the connection cannot carry another request (an attachment that did not end with
	// the host's END, a wait for the entrypoint).
	done bool
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
