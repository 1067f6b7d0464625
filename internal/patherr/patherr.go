// Package patherr holds the one helper capsule's packages use to report a
// file error in their own words.
package patherr

import (
	"errors"
	"io/fs"
)

// Unwrap drops the operation and path of a *fs.PathError (what os
// returns) and returns the cause, such as "no such file or directory":
// callers name the file themselves. Other errors come back as they are.
func Unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
