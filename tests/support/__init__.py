"""Test support: real Mosquitto, real central processes, edge daemons on
gpiozero's MockFactory.  Shared by the test suite and the benchmarks."""
