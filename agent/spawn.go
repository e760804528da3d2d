package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

type spawnRequest struct {
	ID      *string           `json:"id"`
	Argv    []string          `json:"argv"`
	Env     map[string]string `json:"env"`
	HomeSet bool              `json:"home_set"`
	Cwd     string            `json:"cwd"`
	User    json.RawMessage   `json:"user"`
	Timeout *float64          `json:"timeout"`
	Stdin   bool              `json:"stdin"`
	Pty     bool              `json:"pty"`
	Rows    int               `json:"rows"`
	Cols    int               `json:"cols"`
	Attach  bool              `json:"attach"`
}

// userSpec reads "user" as the host sends it: a string, a number, or null.
func userSpec(raw json.RawMessage) (string, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", false, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, s != "", nil
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), true, nil
	}
	return "", false, badField("user", "user must be a name or a number")
}

var devNull int // opened at start, before any sandbox code runs: the sandbox may replace /dev/null

// lookPath finds argv[0] the way execvpe does, on the PATH the command will get.
func lookPath(name string, env []string, cwd string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := "/bin:/usr/bin"
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			path = kv[5:]
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, name)
		if !filepath.IsAbs(candidate) {
			candidate = filepath.Join(cwd, candidate)
		}
		var st syscall.Stat_t
		if syscall.Stat(candidate, &st) == nil && st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return candidate
		}
	}
	return ""
}

func closeFds(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}

func pipe() (int, int, error) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return -1, -1, err
	}
	return p[0], p[1], nil
}

// openPty returns a pty's master (non-blocking, for this process) and its peer (for the child).
func openPty(rows, cols int) (*os.File, int, error) {
	fd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, -1, err
	}
	unlock := int32(0)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		syscall.Close(fd)
		return nil, -1, e
	}
	const tiocgptpeer = 0x5441
	peer, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tiocgptpeer, uintptr(syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC))
	if e != 0 {
		syscall.Close(fd)
		return nil, -1, e
	}
	master := os.NewFile(uintptr(fd), "pty")
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	setSize(master, rows, cols)
	return master, int(peer), nil
}

func nonBlockingFile(fd int, name string) *os.File {
	syscall.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), name)
}

// spawn starts a process. Its output is read by goroutines on the runtime's poller, so starting
// one needs no thread: a command that fills the pids limit at once cannot starve its readers.
func spawn(req *spawnRequest, env []string) (*Proc, error) {
	if len(req.Argv) == 0 {
		return nil, badField("command", "the command is empty")
	}
	spec, hasUser, err := userSpec(req.User)
	if err != nil {
		return nil, err
	}
	var id *identity
	if hasUser {
		if id, err = resolveIdentity(spec); err != nil {
			return nil, err
		}
		if !req.HomeSet && id.home != "" {
			env = setEnv(env, "HOME", id.home)
		}
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		return nil, badField("cwd", "working directory %s does not exist in the sandbox", cwd)
	}
	path := lookPath(req.Argv[0], env, cwd)
	if path == "" {
		return nil, badField("command", "command not found: %s", req.Argv[0])
	}

	var master, stdin *os.File
	var readers []*os.File
	var kinds []byte
	var childFds []int
	if req.Pty {
		m, peer, err := openPty(req.Rows, req.Cols)
		if err != nil {
			return nil, osError(err, "/dev/ptmx")
		}
		readFd, err := syscall.Dup(int(m.Fd()))
		if err != nil {
			m.Close()
			closeFds(peer)
			return nil, osError(err, "pty")
		}
		syscall.CloseOnExec(readFd)
		master = m
		readers, kinds = []*os.File{nonBlockingFile(readFd, "pty")}, []byte{frameStdout}
		childFds = []int{peer, peer, peer}
	} else if req.ID != nil && *req.ID == "entrypoint" {
		// The entrypoint's output is one log: one pipe for both streams keeps its lines in the
		// order they were written (two pipes read apart race, "oops" before "started").
		outR, outW, err := pipe()
		if err != nil {
			return nil, osError(err, "pipe")
		}
		readers, kinds = []*os.File{nonBlockingFile(outR, "stdout")}, []byte{frameStdout}
		childFds = []int{devNull, outW, outW}
	} else {
		outR, outW, err := pipe()
		if err != nil {
			return nil, osError(err, "pipe")
		}
		errR, errW, err := pipe()
		if err != nil {
			closeFds(outR, outW)
			return nil, osError(err, "pipe")
		}
		in := devNull
		if req.Stdin {
			inR, inW, err := pipe()
			if err != nil {
				closeFds(outR, outW, errR, errW)
				return nil, osError(err, "pipe")
			}
			stdin = nonBlockingFile(inW, "stdin")
			in = inR
		}
		readers = []*os.File{nonBlockingFile(outR, "stdout"), nonBlockingFile(errR, "stderr")}
		kinds = []byte{frameStdout, frameStderr}
		childFds = []int{in, outW, errW}
	}
	closeChildFds := func() {
		seen := map[int]bool{devNull: true}
		for _, fd := range childFds {
			if !seen[fd] {
				seen[fd] = true
				syscall.Close(fd)
			}
		}
	}
	fail := func(err error) (*Proc, error) {
		closeChildFds()
		for _, r := range readers {
			r.Close()
		}
		if master != nil {
			master.Close()
		}
		if stdin != nil {
			stdin.Close()
		}
		return nil, err
	}

	attr := &syscall.ProcAttr{
		Dir:   cwd,
		Env:   env,
		Files: []uintptr{uintptr(childFds[0]), uintptr(childFds[1]), uintptr(childFds[2])},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: req.Pty, Ctty: 0},
	}
	if id != nil {
		attr.Sys.Credential = id.cred
	}

	procsMu.Lock()
	pid, err := syscall.ForkExec(path, req.Argv, attr)
	if err != nil {
		procsMu.Unlock()
		switch errnoOf(err) {
		case syscall.ENOENT, syscall.ENOTDIR:
			return fail(badField("command", "command not found: %s", req.Argv[0]))
		case syscall.EACCES, syscall.EPERM:
			return fail(badField("command", "permission denied: %s", req.Argv[0]))
		case syscall.ENOEXEC:
			return fail(badField("command", "not an executable the sandbox can run: %s", req.Argv[0]))
		case syscall.E2BIG:
			return fail(badField("command", "the command line and environment are too long"))
		case syscall.EINVAL:
			return fail(badField("command", "the command or its environment contains a NUL byte"))
		case syscall.EAGAIN:
			return fail(exhausted())
		}
		return fail(osError(err, req.Argv[0]))
	}
	var procID string
	if req.ID != nil {
		procID = *req.ID
	} else {
		counter++
		procID = "p" + itoa(counter)
	}
	streams := make([]*stream, len(readers))
	for i, r := range readers {
		streams[i] = &stream{f: r, kind: kinds[i], pty: req.Pty}
	}
	p := &Proc{
		id: procID, pid: pid, started: time.Now(), changed: make(chan struct{}),
		master: master, stdin: stdin, openStreams: len(readers), streams: streams,
	}
	register(p)
	procsMu.Unlock()
	closeChildFds()
	preferForOOM(pid)
	for _, s := range streams {
		go p.read(s)
	}
	if req.Timeout != nil && *req.Timeout > 0 {
		p.mu.Lock()
		if !p.hasEnded {
			p.timer = time.AfterFunc(time.Duration(*req.Timeout*float64(time.Second)), p.expire)
		}
		p.mu.Unlock()
	}
	return p, nil
}

func itoa(n int) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(buf[i:])
		}
	}
}

func setEnv(env []string, key, value string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

func writeStdin(p *Proc, data []byte) error {
	p.mu.Lock()
	master, stdin := p.master, p.stdin
	p.mu.Unlock()
	target := master
	if target == nil {
		target = stdin
	}
	if target == nil {
		return conflict("process %s has no open stdin", p.id)
	}
	if _, err := target.Write(data); err != nil {
		return conflict("process %s has closed its stdin", p.id)
	}
	return nil
}

func closeStdin(p *Proc) {
	p.mu.Lock()
	master, stdin := p.master, p.stdin
	if master == nil {
		p.stdin = nil
	}
	p.mu.Unlock()
	if master != nil {
		master.Write([]byte{4})
	} else if stdin != nil {
		stdin.Close()
	}
}
