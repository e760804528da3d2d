package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// The TCP listener's gate. Anyone who can reach the port may connect (on a pod network, other pods
// can), so before a connection may send a request its first frame must be AUTH carrying the
// sandbox's token, within authTimeout. Anything else -- another kind, a token too long, a wrong
// one, silence -- gets one ERROR UNAUTHORIZED frame and the connection is closed: no request is
// read, nothing is started.
//
// The token arrives in a file, read once at start and unlinked before the entrypoint runs. Not on
// the command line: /proc/1/cmdline is readable by every process of the sandbox. Not in the
// environment: the entrypoint inherits the agent's environment, and /proc/1/environ keeps the
// original even after an unsetenv. A file that is gone before any code of the sandbox runs leaves
// the token only in this process's memory, which PR_SET_DUMPABLE=0 keeps from the sandbox's
// other processes.

// pendingAuth bounds connections that have not yet shown a token: a flood of idle connections
// costs at most this many goroutines and buffers of maxToken bytes.
var pendingAuth = make(chan struct{}, 64)

func readToken(path string) []byte {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		fatal("token file: %v", err)
	}
	f := os.NewFile(uintptr(fd), path)
	data, err := io.ReadAll(io.LimitReader(f, int64(maxToken)+2))
	f.Close()
	if err != nil {
		fatal("token file: %v", err)
	}
	// A read-only mount (a Kubernetes secret volume) cannot be unlinked: the pod backend must then
	// keep that mount out of the sandbox's view; say so rather than fail.
	if err := syscall.Unlink(path); err != nil {
		os.Stderr.WriteString("sandboxd agent: token file left in place: " + err.Error() + "\n")
	}
	token := bytes.TrimRight(data, "\r\n")
	if len(token) < minToken || len(token) > maxToken {
		fatal("the token must be %d to %d bytes", minToken, maxToken)
	}
	return token
}

func serveAuthenticated(c net.Conn, token []byte) {
	select {
	case pendingAuth <- struct{}{}:
	default:
		c.Close()
		return
	}
	ok := authenticate(c, token)
	<-pendingAuth
	if !ok {
		refuse(c)
		return
	}
	c.SetDeadline(time.Time{})
	serve(&conn{c: c})
}

func authenticate(c net.Conn, token []byte) bool {
	c.SetDeadline(time.Now().Add(authTimeout))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return false
	}
	size := binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] != frameAuth || size > uint32(maxToken) {
		return false // never read: an oversized token is not buffered
	}
	given := make([]byte, size)
	if _, err := io.ReadFull(c, given); err != nil {
		return false
	}
	// Compared as digests so that neither the content nor the length shows in the timing.
	a, b := sha256.Sum256(given), sha256.Sum256(token)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// refuse answers ERROR UNAUTHORIZED and hangs up. What the peer already sent is read and dropped
// for a moment, bounded in bytes and time: closing with unread data would reset the connection and
// could lose the answer before the peer reads it.
func refuse(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	(&conn{c: c}).sendJSON(frameError, map[string]string{"code": "UNAUTHORIZED", "message": "a valid token is required"})
	if tcp, ok := c.(*net.TCPConn); ok {
		tcp.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}
