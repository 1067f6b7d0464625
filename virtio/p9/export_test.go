package p9

// SetFailedUnlinkLimit lowers the bound on refused unlinks for a test.
func SetFailedUnlinkLimit(n int) (restore func()) {
	failedUnlinkLimit = n
	return func() { failedUnlinkLimit = MaxFailedUnlinks }
}
