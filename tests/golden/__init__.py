"""Golden evaluations: one tiny trained model per family, its export and its metrics
(tests/golden/regenerate.py makes them, tests/test_golden.py checks them)."""
