"""Random-weight models of the real shapes (and tiny ones), saved as .nemo files, for the tests and
the benchmarks: no weights can be downloaded where they run. Not part of the installed product."""
