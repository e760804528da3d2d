package main

import (
	"errors"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// A process's output is read from each of its pipes (or its pty) by a goroutine of its own. Once the
// process has ended, its run is over when each stream has given up what the process wrote before it
// ended, even if children it left in the background still hold the pipe. Wall time cannot say when
// that is: the agent shares the sandbox's CPU quota, and at 1 % of a CPU it may not run for a while
// after the end. So each reader says so itself, on either of two signs:
//   - a read begun after the end found the pipe empty (all it held came first: a pipe is in order,
//     and a pty's pending input is flushed to the reader before it answers EAGAIN);
//   - the bytes it held at the end have been read: this ends the wait for a child that writes
//     without pause and never lets the pipe run empty. A pty's count is only its line discipline's
//     buffer; what waits in its flip buffers, bounded by the kernel, is allowed for with ptySlack.
//
// No lock of the agent is held in a syscall on a pipe: a process can hold a pipe's lock in the
// kernel for as long as it likes (splice from an idle socket), and then only its reader waits.

// ptySlack is more than a pty can hold beyond what TIOCINQ counts: its flip buffers are bounded by
// the kernel's tty buffer limit, 640 KiB by default, which the kernel says may come to over twice
// that in memory.
const ptySlack = 4 << 20

type stream struct {
	f      *os.File
	kind   byte
	pty    bool
	caught bool // under p.mu: what the process wrote before it ended has all been kept
}

// wake makes a reader waiting on the poller look again, now that its process has ended. Called
// under p.mu; it only sets a deadline, which never waits.
func (s *stream) wake() {
	s.f.SetReadDeadline(time.Now())
}

func (p *Proc) caughtUp(s *stream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !s.caught {
		s.caught = true
		p.broadcast()
	}
}

func (p *Proc) endedYet() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hasEnded
}

// read keeps a stream's output until its end, and says when it has caught up with its ended
// process.
func (p *Proc) read(s *stream) {
	buf := make([]byte, chunkSize)
	raw, err := s.f.SyscallConn()
	var got int64       // bytes read so far
	target := int64(-1) // once the process has ended: got then, plus what the pipe held
	ended, caught := false, false
	for err == nil {
		if !ended && p.endedYet() {
			ended = true
			s.f.SetReadDeadline(time.Time{}) // the wake is seen
			target = got + int64(pipeHolds(raw))
			if s.pty {
				target += ptySlack
			}
		}
		if !caught && target >= 0 && got >= target {
			caught = true
			p.caughtUp(s)
		}
		n, empty, eof := 0, false, false
		err = raw.Read(func(fd uintptr) bool {
			for {
				m, rerr := syscall.Read(int(fd), buf)
				switch {
				case rerr == syscall.EINTR:
					continue
				case rerr == syscall.EAGAIN:
					if ended && !caught {
						empty = true
						return true
					}
					return false // wait on the poller
				case m > 0:
					n = m
				default: // EOF, or EIO from a pty whose last writer closed
					eof = true
				}
				return true
			}
		})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = nil // woken by wake: look again
			continue
		}
		switch {
		case n > 0:
			got += int64(n)
			p.append(s.kind, append([]byte(nil), buf[:n]...))
		case empty:
			caught = true
			p.caughtUp(s)
		case eof:
			err = errors.New("end of stream")
		}
	}
	s.f.Close()
	p.streamClosed(s)
}

// pipeHolds is how many bytes wait unread in a pipe (for a pty, in its line discipline only). It
// may wait on the pipe's lock in the kernel: only the stream's reader calls it.
func pipeHolds(raw syscall.RawConn) int {
	var n int32
	var errno syscall.Errno
	if raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}) != nil || errno != 0 {
		return 0
	}
	return int(n)
}
