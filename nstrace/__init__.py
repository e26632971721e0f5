"""nstrace: a Linux namespace tracer and inspector built on eBPF (libbpf CO-RE)."""

__version__ = "0.1.0"
