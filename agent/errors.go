package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// agentError is what the host gets in an ERROR frame: a code it maps to an HTTP status, and for
// BAD_REQUEST the request field at fault.
type agentError struct {
	Code     string
	Message  string
	Field    string
	HasField bool
}

func (e *agentError) Error() string { return e.Message }

func (e *agentError) payload() map[string]any {
	out := map[string]any{"code": e.Code, "message": e.Message}
	if e.HasField {
		if e.Field == "" {
			out["field"] = nil
		} else {
			out["field"] = e.Field
		}
	}
	return out
}

// badField is a request value that is wrong inside this sandbox (no such user, cwd or command).
func badField(field, format string, args ...any) error {
	return &agentError{Code: "BAD_REQUEST", Message: fmt.Sprintf(format, args...), Field: field, HasField: true}
}

func badRequest(format string, args ...any) error {
	return &agentError{Code: "BAD_REQUEST", Message: fmt.Sprintf(format, args...), HasField: true}
}

func notFound(format string, args ...any) error {
	return &agentError{Code: "NOT_FOUND", Message: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &agentError{Code: "CONFLICT", Message: fmt.Sprintf(format, args...)}
}

const pidsExhausted = "the sandbox has no processes left under its pids limit"

func exhausted() error { return &agentError{Code: "EXHAUSTED", Message: pidsExhausted} }

// refused is an archive member that tar_put will not extract.
func refused(format string, args ...any) error {
	return &agentError{Code: "BAD_REQUEST", Message: "archive refused: " + fmt.Sprintf(format, args...)}
}

var errnoCodes = map[syscall.Errno]string{
	syscall.ENOENT:       "NOT_FOUND",
	syscall.EEXIST:       "CONFLICT",
	syscall.ENOTEMPTY:    "CONFLICT",
	syscall.EBUSY:        "CONFLICT",
	syscall.EISDIR:       "BAD_REQUEST",
	syscall.ENOTDIR:      "BAD_REQUEST",
	syscall.ELOOP:        "BAD_REQUEST",
	syscall.ENAMETOOLONG: "BAD_REQUEST",
	syscall.EXDEV:        "BAD_REQUEST",
	syscall.E2BIG:        "BAD_REQUEST",
	syscall.EINVAL:       "BAD_REQUEST",
	syscall.EACCES:       "FORBIDDEN",
	syscall.EPERM:        "FORBIDDEN",
	syscall.EROFS:        "FORBIDDEN",
	syscall.ENOSPC:       "NO_SPACE",
	syscall.EDQUOT:       "NO_SPACE",
	syscall.EFBIG:        "NO_SPACE",
	syscall.EAGAIN:       "EXHAUSTED",
}

// strerror is the C library's wording ("No such file or directory"), as the host has always shown.
func strerror(errno syscall.Errno) string {
	text := errno.Error()
	if text == "" {
		return text
	}
	return strings.ToUpper(text[:1]) + text[1:]
}

// osError turns a failed system call on path into the ERROR the host expects.
func osError(err error, path string) error {
	var ae *agentError
	if errors.As(err, &ae) {
		return ae
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return &agentError{Code: "INTERNAL", Message: err.Error()}
	}
	var pe *os.PathError
	if errors.As(err, &pe) && path == "" {
		path = pe.Path
	}
	var le *os.LinkError
	if errors.As(err, &le) && path == "" {
		path = le.Old
	}
	code, ok := errnoCodes[errno]
	if !ok {
		code = "INTERNAL"
	}
	if errno == syscall.EAGAIN {
		return exhausted()
	}
	return &agentError{Code: code, Message: fmt.Sprintf("%s: %s", strerror(errno), path)}
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}
