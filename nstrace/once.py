"""functools.cache for a function of no arguments, without importing functools.

The answers nstrace.bpf.preload's thread asks for once per process (whether
the kernel takes fentry, BPF atomics or open_tree's namespace flag, its
kallsyms) are kept with this: functools, and the collections it imports,
would cost watch 3 ms before its load could begin (bench: start-up breakdown).
"""


def once(fn):
    """fn, called the first time only; its answer is kept (cache_clear() forgets it)."""
    kept = []

    def answer():
        if not kept:
            kept.append(fn())
        return kept[0]
    answer.__name__, answer.__qualname__, answer.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    answer.__wrapped__ = fn
    answer.cache_clear = kept.clear
    return answer
