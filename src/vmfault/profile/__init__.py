"""Profiles of a workload's golden run: where the kernel spends its time (`kernel`), how often
each instruction class executes in a function (`instructions`, from QEMU's execution log
parsed by `execlog`). Both are cached beside the image."""
