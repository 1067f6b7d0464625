package patherr

import (
	"errors"
	"io/fs"
	"os"
	"testing"
)

func TestUnwrap(t *testing.T) {
	_, err := os.Open("/nonexistent/x")
	if got := Unwrap(err); !errors.Is(got, fs.ErrNotExist) || got.Error() != "no such file or directory" {
		t.Errorf("Unwrap(%v) = %v", err, got)
	}
	other := errors.New("other")
	if Unwrap(other) != other || Unwrap(nil) != nil {
		t.Error("errors other than *fs.PathError changed")
	}
}
