// The in-sandbox agent: the sandbox's PID 1, which starts processes and serves files on request.
//
// It is a static binary built from this source by scripts/bootstrap and mounted read-only into
// every sandbox: nothing of the image (interpreter, C library, NSS modules) is ever loaded into
// it. It runs inside every namespace, cgroup, seccomp filter and capability set that the OCI
// runtime applied, so everything it starts inherits them.
//
// The host hands it a listening unix socket as its stdin; the socket's path lives in a host
// directory the sandbox cannot see. Or, where no such socket can be handed over (a pod), it
// listens on TCP (--listen tcp:ADDR) and every connection must first show the sandbox's token
// (--token-file PATH; see auth.go). Every connection carries one request. The protocol is
// agent/PROTOCOL.md; its numbers are protocol.json, shared with the host.
//
//	sandboxd-agent [--listen tcp:ADDR --token-file PATH] [CONFIG-JSON]
//	sandboxd-agent --protocol     prints the protocol definition it was built with
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

type agentConfig struct {
	Entrypoint []string        `json:"entrypoint"`
	Cwd        string          `json:"cwd"`
	User       json.RawMessage `json:"user"`
}

const entrypointFailed = "sandboxd: entrypoint failed to start: "

func main() {
	opts := parseArgs(os.Args[1:])
	if opts.printProtocol {
		os.Stdout.Write(protocolJSON)
		return
	}
	// Other processes of the sandbox run as the same uid: undumpable, they cannot read the
	// agent's memory or file descriptors through /proc/1.
	syscall.RawSyscall6(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0, 0, 0, 0)
	runtime.GOMAXPROCS(2)
	debug.SetGCPercent(50)

	var err error
	devNull, err = syscall.Open("/dev/null", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		fatal("open /dev/null: %v", err)
	}
	// The token is read (and its file removed) before anything of the sandbox runs.
	var token []byte
	if opts.tokenFile != "" {
		token = readToken(opts.tokenFile)
	}
	listenFd := -1
	if opts.listen == "" {
		// The listening socket arrives as stdin; stdin proper is /dev/null from here on.
		if listenFd, err = dupCloexec(0); err != nil {
			fatal("no listening socket on stdin: %v", err)
		}
	}
	syscall.Dup2(devNull, 0)
	// stdout is the host's pipe for the entrypoint's log: kept on its own descriptor, non-blocking,
	// so that a host that stopped reading never stops this process.
	logFd, err := dupCloexec(1)
	if err != nil {
		fatal("no log pipe on stdout: %v", err)
	}
	logOut := nonBlockingFile(logFd, "log")

	signals := make(chan os.Signal, 16)
	// Consumed here, so that none of these ends the sandbox's init the way Go's defaults would;
	// SIGTERM does, as before.
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT,
		syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM)
	go func() {
		for sig := range signals {
			switch sig {
			case syscall.SIGCHLD:
				reap()
			case syscall.SIGTERM:
				os.Exit(0)
			}
		}
	}()
	reserveThreads()

	var config agentConfig
	if opts.config != "" {
		if err := json.Unmarshal([]byte(opts.config), &config); err != nil {
			fatal("bad configuration: %v", err)
		}
	}
	if len(config.Entrypoint) > 0 {
		entry := "entrypoint"
		proc, err := spawn(&spawnRequest{ID: &entry, Argv: config.Entrypoint, Cwd: config.Cwd, User: config.User}, os.Environ())
		if err != nil { // not found, not executable: say so in the log, end the sandbox
			logOut.Write([]byte(entrypointFailed + err.Error() + "\n"))
			os.Exit(127)
		}
		go copyLog(proc, logOut)
	}

	if opts.listen != "" {
		listener, err := net.Listen("tcp", opts.listen)
		if err != nil {
			fatal("listen: %v", err)
		}
		acceptLoop(listener, func(c net.Conn) { serveAuthenticated(c, token) })
	}
	file := os.NewFile(uintptr(listenFd), "listener")
	listener, err := net.FileListener(file)
	file.Close()
	if err != nil {
		fatal("listen: %v", err)
	}
	acceptLoop(listener, func(c net.Conn) { serve(&conn{c: c}) })
}

func acceptLoop(listener net.Listener, handle func(net.Conn)) {
	for {
		c, err := listener.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c)
	}
}

type options struct {
	printProtocol bool
	listen        string // host:port to listen on with TCP; empty: the socket on stdin
	tokenFile     string
	config        string
}

func parseArgs(args []string) options {
	var o options
	for i := 0; i < len(args); i++ {
		value := func() string {
			if i+1 >= len(args) {
				fatal("%s needs a value", args[i])
			}
			i++
			return args[i]
		}
		switch args[i] {
		case "--protocol":
			o.printProtocol = true
		case "--listen":
			addr := value()
			if !strings.HasPrefix(addr, "tcp:") {
				fatal("--listen takes tcp:HOST:PORT")
			}
			o.listen = strings.TrimPrefix(addr, "tcp:")
		case "--token-file":
			o.tokenFile = value()
		default:
			if strings.HasPrefix(args[i], "--") || o.config != "" {
				fatal("unknown argument %q", args[i])
			}
			o.config = args[i]
		}
	}
	if !o.printProtocol && (o.listen == "") != (o.tokenFile == "") {
		fatal("--listen and --token-file go together: a TCP listener always takes a token")
	}
	return o
}

func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 3)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sandboxd agent: "+format+"\n", args...)
	os.Exit(1)
}

// -- the entrypoint's log ---------------------------------------------------------------------------

const (
	logCap       = 16 << 20 // bytes of entrypoint output sent to the host's log
	logTruncated = "\n[sandboxd: log truncated here; later output is not kept on disk]\n"
)

var (
	logCaughtUp = make(chan struct{}) // closed once the log has all the ended entrypoint's output
	logOnce     sync.Once
)

// copyLog sends the entrypoint's output to the host's log pipe, up to logCap bytes. The host
// enforces its own cap on what it reads; this only spares it reading the rest. A full pipe (the
// host is restarting) waits on the poller, not on a thread; output dropped from the process's
// buffer meanwhile is skipped.
func copyLog(p *Proc, out *os.File) {
	defer logOnce.Do(func() { close(logCaughtUp) })
	var pos int64
	left := int64(logCap)
	for {
		p.mu.Lock()
		for p.size <= pos {
			ch, ended := p.changed, p.hasEnded
			if p.doneLocked() {
				logOnce.Do(func() { close(logCaughtUp) })
				p.mu.Unlock()
				<-ch
			} else {
				p.mu.Unlock()
				p.waitChange(ch, ended, nil)
			}
			p.mu.Lock()
		}
		pending := p.pendingLocked(pos)
		p.mu.Unlock()
		for _, c := range pending {
			data := c.data[max64(pos-c.off, 0):]
			pos = c.off + int64(len(c.data))
			if int64(len(data)) > left {
				data = data[:left]
			}
			left -= int64(len(data))
			if !writeLog(out, data) {
				return
			}
			if left <= 0 {
				writeLog(out, []byte(logTruncated))
				return
			}
		}
	}
}

// writeLog writes all of data; with no reader on the pipe (between two servers) it retries.
func writeLog(out *os.File, data []byte) bool {
	for len(data) > 0 {
		n, err := out.Write(data)
		data = data[n:]
		if err != nil {
			if errnoOf(err) != syscall.EPIPE {
				return false
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	return true
}
