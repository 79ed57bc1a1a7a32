"""QR credential formats, their verification and the pass/fail policy (pure logic)."""
