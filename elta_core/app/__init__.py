"""The ``elta`` application: the command line, training on image folders, the demo and
plots. It is built on the library (core, adapters, data loaders) and nothing in the
library imports it."""
