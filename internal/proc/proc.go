// Package proc records when the capsule process started. It has no
// dependencies beyond the standard time package, so its variable is
// initialised among the very first at start-up.
package proc

import "time"

// Start is the time the process started, as near as Go initialisation
// allows (within a millisecond or so of exec).
var Start = time.Now()

// Since is the time elapsed since Start.
func Since() time.Duration { return time.Since(Start) }
