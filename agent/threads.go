package main

import (
	"runtime"
	"sync"
	"syscall"
)

// The Go runtime starts OS threads as it needs them, and a thread it cannot start (the sandbox is
// at its pids limit, say under a fork bomb) is fatal to it. So the threads the agent can ever need
// are started here, while pids are free, and parked: the runtime never ends an idle thread, and
// later needs are met from these. What bounds the need: GOMAXPROCS running threads, plus one for
// each call blocked in the kernel, which only file operations make for long (fileOpSlots at once);
// pipes, ptys and sockets wait on the poller without a thread.
const (
	fileOpSlots     = 2
	reservedThreads = 2 + fileOpSlots
)

func reserveThreads() {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return
	}
	var started, done sync.WaitGroup
	for i := 0; i < reservedThreads; i++ {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			started.Done()
			var b [1]byte
			syscall.Read(p[0], b[:]) // each holds its own thread, blocked, until all exist
			runtime.UnlockOSThread()
		}()
	}
	started.Wait()
	syscall.Write(p[1], make([]byte, reservedThreads))
	done.Wait()
	syscall.Close(p[0])
	syscall.Close(p[1])
}
