"""Boot tests: a Debian guest image, a harness that boots it like a BLS loader, and the tests."""
