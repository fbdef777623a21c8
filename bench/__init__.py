"""allowhelp benchmarks: run ``bench/run`` (or ``python -m bench``); see docs/benchmarks.md."""
