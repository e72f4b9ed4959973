"""One fuzz harness per parser; each module defines `HARNESS`."""
