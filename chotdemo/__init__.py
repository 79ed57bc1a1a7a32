"""The demo and the simulated world around the system: not part of a terminal or the collector.

- `chotdemo.cli`: `chot demo` (the whole system locally) and `chot demo-terminal` (one terminal
  daemon fed by the synthetic crowd, for the fault suite and the tests).
- `chotdemo.crowd`: the synthetic crowd's people (signed declarations from a test issuer, some
  forged, expired, garbled...) and its frame source, plugged in as `scanner.source = "synthetic"`.
- `chotdemo.testing`: wire events, collector keys and configs built for tests, the demo and bench/.

Production code (chot/, device/, collector/, provisioning/) never imports this package
(tests/test_layering.py); it imports them.
"""
