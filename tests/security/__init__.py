"""Attacks from the penetration test of wave 3 (issue 30), one module per area: each test
performs the attack as the report describes it and asserts that it no longer works."""
