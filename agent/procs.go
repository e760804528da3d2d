package main

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const (
	outputCap  = 16 << 20 // bytes of output kept per running process; older output is dropped
	keepEnded  = 256      // ended processes kept for status/log queries
	drainGrace = 200 * time.Millisecond
	// The longest a run waits, after its process ended, for what the process wrote to be read (see
	// streams.go): the agent shares the sandbox's CPU quota, so at 1 % of a CPU reading it is slow.
	drainLimit = 30 * time.Second
	// Finished processes share this much kept output, the longest finished first to give theirs
	// up, so chatty background jobs that ended do not hold the sandbox's memory.
	endedBudget  = 16 << 20
	endedMinimum = 64 << 10 // each finished process keeps at least its last bytes
)

type chunk struct {
	off  int64
	kind byte
	data []byte
}

// Proc is one started process: its output buffer, exit status and what waits on either.
type Proc struct {
	id      string
	pid     int
	started time.Time

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced on every change
	ended       time.Time
	hasEnded    bool
	exitCode    int
	signal      int
	signaled    bool
	timedOut    bool
	chunks      []chunk
	base        int64 // offset of the first byte still kept
	size        int64 // bytes ever produced
	openStreams int
	streams     []*stream // where its output is read from (streams.go)
	killing     bool
	master      *os.File // the pty, for stdin and resizes
	stdin       *os.File // the stdin pipe of a process started with one
	timer       *time.Timer
}

type procInfo struct {
	ID         string   `json:"id"`
	Pid        int      `json:"pid"`
	Running    bool     `json:"running"`
	ExitCode   *int     `json:"exit_code"`
	Signal     *int     `json:"signal"`
	TimedOut   bool     `json:"timed_out"`
	StartedAt  float64  `json:"started_at"`
	EndedAt    *float64 `json:"ended_at"`
	DurationMs float64  `json:"duration_ms"`
	OutputSize int64    `json:"output_size"`
	Offset     *int64   `json:"offset,omitempty"`
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func (p *Proc) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proc) append(kind byte, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.chunks = append(p.chunks, chunk{p.size, kind, data})
	p.size += int64(len(data))
	p.dropBelow(outputCap)
	p.broadcast()
}

// dropBelow drops the oldest chunks until at most keep bytes are kept (the last chunk stays).
func (p *Proc) dropBelow(keep int64) {
	drop := 0
	for p.size-p.base > keep && len(p.chunks)-drop > 1 {
		old := p.chunks[drop]
		p.base = old.off + int64(len(old.data))
		p.chunks[drop] = chunk{}
		drop++
	}
	if drop > 0 {
		p.chunks = p.chunks[drop:]
		if cap(p.chunks) > 64 && len(p.chunks) < cap(p.chunks)/4 {
			p.chunks = append([]chunk(nil), p.chunks...)
		}
	}
}

func (p *Proc) kept() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size - p.base
}

func (p *Proc) streamClosed(s *stream) {
	p.mu.Lock()
	p.openStreams--
	s.caught = true
	p.broadcast()
	p.mu.Unlock()
	trimEnded()
}

func (p *Proc) setExit(status syscall.WaitStatus) {
	p.mu.Lock()
	if status.Signaled() {
		p.signaled = true
		p.signal = int(status.Signal())
		p.exitCode = 128 + p.signal
	} else {
		p.exitCode = status.ExitStatus()
	}
	p.ended = time.Now()
	p.hasEnded = true
	for _, s := range p.streams {
		s.wake()
	}
	if p.timer != nil {
		p.timer.Stop()
	}
	p.broadcast()
	p.mu.Unlock()
	trimEnded()
}

// doneLocked: output is complete once the process has exited and its pipes are drained; after a
// timeout, once the rest of its tree is gone too. Children it left running in the background may
// hold its pipes forever (`server &`): after a short grace the run is over and they carry on, once
// each stream has given up what the process itself wrote (streams.go).
func (p *Proc) doneLocked() bool {
	if !p.hasEnded || p.killing {
		return false
	}
	if p.openStreams <= 0 {
		return true
	}
	since := time.Since(p.ended)
	if since <= drainGrace {
		return false
	}
	for _, s := range p.streams {
		if !s.caught && since <= drainLimit {
			return false
		}
	}
	return true
}

// waitChange waits for a change, or the drain grace once the process has ended.
func (p *Proc) waitChange(ch <-chan struct{}, ended bool, cancel <-chan struct{}) bool {
	if !ended {
		select {
		case <-ch:
			return true
		case <-cancel:
			return false
		}
	}
	timer := time.NewTimer(drainGrace)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
	case <-cancel:
		return false
	}
	return true
}

// waitDone waits until the output is complete.
func (p *Proc) waitDone(cancel <-chan struct{}) bool {
	p.mu.Lock()
	for !p.doneLocked() {
		ch, ended := p.changed, p.hasEnded
		p.mu.Unlock()
		if !p.waitChange(ch, ended, cancel) {
			return false
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return true
}

func (p *Proc) closeMaster() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.master != nil {
		p.master.Close()
		p.master = nil
	}
	if p.stdin != nil && p.hasEnded {
		p.stdin.Close()
		p.stdin = nil
	}
}

func (p *Proc) expire() {
	p.mu.Lock()
	if p.hasEnded {
		p.mu.Unlock()
		return
	}
	p.timedOut = true
	p.killing = true
	p.mu.Unlock()
	killTree(p.pid, syscall.SIGKILL)
	p.mu.Lock()
	p.killing = false
	p.broadcast()
	p.mu.Unlock()
}

func (p *Proc) info() procInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := time.Now()
	info := procInfo{
		ID:         p.id,
		Pid:        p.pid,
		Running:    !p.hasEnded,
		TimedOut:   p.timedOut,
		StartedAt:  unixSeconds(p.started),
		OutputSize: p.size,
	}
	if p.hasEnded {
		end = p.ended
		code, ended := p.exitCode, unixSeconds(p.ended)
		info.ExitCode, info.EndedAt = &code, &ended
		if p.signaled {
			sig := p.signal
			info.Signal = &sig
		}
	}
	info.DurationMs = math.Round(float64(end.Sub(p.started).Nanoseconds())/1e3) / 1e3
	return info
}

// pending returns the kept chunks that end after pos, and whether the output is complete.
func (p *Proc) pendingLocked(pos int64) []chunk {
	i := sort.Search(len(p.chunks), func(i int) bool {
		c := p.chunks[i]
		return c.off+int64(len(c.data)) > pos
	})
	return append([]chunk(nil), p.chunks[i:]...)
}

// -- the process table --------------------------------------------------------------------------

var (
	procsMu   sync.Mutex
	procs     = map[string]*Proc{}
	procOrder []string
	byPid     = map[int]*Proc{}
	counter   int
	entryDone = make(chan struct{})
)

func lookup(id string) (*Proc, error) {
	procsMu.Lock()
	defer procsMu.Unlock()
	if p, ok := procs[id]; ok {
		return p, nil
	}
	return nil, notFound("no process %s", id)
}

func listProcs() []procInfo {
	procsMu.Lock()
	list := make([]*Proc, 0, len(procOrder))
	for _, id := range procOrder {
		if id != "entrypoint" {
			list = append(list, procs[id])
		}
	}
	procsMu.Unlock()
	out := make([]procInfo, 0, len(list))
	for _, p := range list {
		out = append(out, p.info())
	}
	return out
}

// register adds p (procsMu held) and forgets the oldest ended processes beyond keepEnded.
func register(p *Proc) {
	if _, exists := procs[p.id]; exists {
		for i, id := range procOrder {
			if id == p.id {
				procOrder = append(procOrder[:i], procOrder[i+1:]...)
				break
			}
		}
	}
	procs[p.id] = p
	procOrder = append(procOrder, p.id)
	byPid[p.pid] = p
	var ended []string
	for _, id := range procOrder {
		q := procs[id]
		q.mu.Lock()
		if q.hasEnded && id != "entrypoint" {
			ended = append(ended, id)
		}
		q.mu.Unlock()
	}
	for _, id := range ended[:max(0, len(ended)-keepEnded)] {
		old := procs[id]
		delete(procs, id)
		for i, other := range procOrder {
			if other == id {
				procOrder = append(procOrder[:i], procOrder[i+1:]...)
				break
			}
		}
		old.closeMaster()
	}
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// trimEnded keeps the output of finished processes within endedBudget, taking from the ones that
// ended first.
func trimEnded() {
	procsMu.Lock()
	var ended []*Proc
	for _, id := range procOrder {
		if id != "entrypoint" {
			ended = append(ended, procs[id])
		}
	}
	procsMu.Unlock()
	var total int64
	var finished []*Proc
	for _, p := range ended {
		p.mu.Lock()
		if p.doneLocked() {
			finished = append(finished, p)
			total += p.size - p.base
		}
		p.mu.Unlock()
	}
	if total <= endedBudget {
		return
	}
	sort.SliceStable(finished, func(i, j int) bool { return finished[i].ended.Before(finished[j].ended) })
	var dropped int64
	for _, p := range finished {
		if total <= endedBudget {
			break
		}
		p.mu.Lock()
		before := p.size - p.base
		p.dropBelow(max64(endedMinimum, before-(total-endedBudget)))
		total -= before - (p.size - p.base)
		dropped += before - (p.size - p.base)
		p.mu.Unlock()
	}
	if dropped >= 8<<20 {
		go releaseMemory()
	}
}

var (
	releasing     sync.Mutex
	releaseWanted atomic.Bool
)

// releaseMemory hands freed output back to the kernel now rather than when the runtime gets to it:
// the memory is charged to the sandbox. A request made while a release runs is served by another
// round, so output dropped meanwhile is not left mapped.
func releaseMemory() {
	releaseWanted.Store(true)
	for releaseWanted.Load() && releasing.TryLock() {
		for releaseWanted.Swap(false) {
			debug.FreeOSMemory()
		}
		releasing.Unlock()
	}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// reap collects every exited child (PID 1 also inherits the sandbox's orphans).
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		procsMu.Lock()
		p := byPid[pid]
		delete(byPid, pid)
		procsMu.Unlock()
		if p != nil {
			p.setExit(status)
			if p.id == "entrypoint" {
				closeOnce(entryDone)
			}
		}
	}
}

var entryOnce sync.Once

func closeOnce(ch chan struct{}) { entryOnce.Do(func() { close(ch) }) }

// -- process trees ---------------------------------------------------------------------------------

type statLine struct{ ppid, pgrp, sid int }

// treeOf returns the pids in root's session or process group and their descendants: what a
// command started.
func treeOf(root int) map[int]bool {
	stats := map[int]statLine{}
	dir, err := os.Open("/proc")
	if err == nil {
		names, _ := dir.Readdirnames(-1)
		dir.Close()
		for _, name := range names {
			pid, err := strconv.Atoi(name)
			if err != nil {
				continue
			}
			data, err := os.ReadFile("/proc/" + name + "/stat")
			if err != nil {
				continue
			}
			text := string(data)
			i := strings.LastIndexByte(text, ')')
			if i < 0 {
				continue
			}
			fields := strings.Fields(text[i+1:])
			if len(fields) < 4 {
				continue
			}
			ppid, _ := strconv.Atoi(fields[1])
			pgrp, _ := strconv.Atoi(fields[2])
			sid, _ := strconv.Atoi(fields[3])
			stats[pid] = statLine{ppid, pgrp, sid}
		}
	}
	found := map[int]bool{root: true}
	for pid, s := range stats {
		if s.pgrp == root || s.sid == root {
			found[pid] = true
		}
	}
	for grew := true; grew; {
		grew = false
		for pid, s := range stats {
			if found[s.ppid] && !found[pid] && pid != 1 {
				found[pid] = true
				grew = true
			}
		}
	}
	delete(found, os.Getpid())
	return found
}

// killTree signals a command's tree. Session and group cover the usual case; the parent walk
// catches children that called setsid. For SIGKILL, repeat until nothing is left: a fork bomb
// forks again between two passes.
func killTree(pid int, sig syscall.Signal) {
	rounds := 1
	if sig == syscall.SIGKILL {
		rounds = 200
	}
	for i := 0; i < rounds; i++ {
		alive := false
		for target := range treeOf(pid) {
			if syscall.Kill(target, sig) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// preferForOOM: at the memory limit the kernel kills the process with the highest score.
// Commands score above the agent, so the sandbox loses the command, not its init.
func preferForOOM(pid int) {
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), os.O_WRONLY, 0)
	if err != nil {
		return
	}
	f.WriteString("500")
	f.Close()
}

func setSize(f *os.File, rows, cols int) error {
	clamp := func(v int) uint16 {
		if v < 1 {
			return 1
		}
		if v > 1000 {
			return 1000
		}
		return uint16(v)
	}
	ws := [4]uint16{clamp(rows), clamp(cols), 0, 0}
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCSWINSZ, uintptr(unsafe.Pointer(&ws)))
	})
	if errno != 0 {
		return errno
	}
	return nil
}
