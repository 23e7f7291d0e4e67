"""Profiles of a workload's golden run: where the kernel spends its time (`kernel`), and how
often each instruction class executes in a function of the workload (`workload`, from
QEMU's execution log parsed by `execlog`). Both are cached beside the image."""
