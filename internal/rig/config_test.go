package rig

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ConfigFromEnv([]string{
		"HOME=/root", "PATH=/usr/bin", "CAPSULE_RIG_TIMEOUT=90s", "CAPSULE_RIG_CPUS=4",
		"CAPSULE_RIG_MEM=3G", "CAPSULE_RIG_VERBOSE=1", "CAPSULE_RIG_CACHE=/c",
		"CAPSULE_FOO=a=b", "GODEBUG=x=1", "CAPSULE_RIG_CPUS=3", "NOT_CAPSULE=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timeout != 90*time.Second || cfg.CPUs != 3 || cfg.Mem != "3G" || !cfg.Verbose || cfg.CacheDir != "/c" {
		t.Errorf("config %+v", cfg)
	}
	wantEnv := []string{"CAPSULE_RIG_TIMEOUT=90s", "CAPSULE_RIG_CPUS=4", "CAPSULE_RIG_MEM=3G",
		"CAPSULE_RIG_VERBOSE=1", "CAPSULE_RIG_CACHE=/c", "CAPSULE_FOO=a=b", "GODEBUG=x=1", "CAPSULE_RIG_CPUS=3"}
	if !slices.Equal(cfg.Env, wantEnv) {
		t.Errorf("env %q, want %q", cfg.Env, wantEnv)
	}
}

func TestConfigFromEnvErrors(t *testing.T) {
	for _, kv := range []string{"CAPSULE_RIG_TIMEOUT=soon", "CAPSULE_RIG_TIMEOUT=-1s", "CAPSULE_RIG_CPUS=0", "CAPSULE_RIG_CPUS=two"} {
		if _, err := ConfigFromEnv([]string{kv}); err == nil {
			t.Errorf("%s: no error", kv)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	cfg, err := Config{Binary: "x.test", Dir: "/work/pkg"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CacheDir != "/xdg/capsule/rig" || cfg.Timeout != DefaultTimeout || cfg.Mem != "2G" || cfg.CPUs != 1 {
		t.Errorf("defaults %+v", cfg)
	}
	if !strings.HasPrefix(cfg.Binary, "/") {
		t.Errorf("binary %q is not absolute", cfg.Binary)
	}
	if _, err := (Config{Mem: "2 GB"}).withDefaults(); err == nil {
		t.Error("bad memory size accepted")
	}
}
