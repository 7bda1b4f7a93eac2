"""Fused kernels of PWTP, beside the readable reference in :mod:`dynapp.pwtp`.

* :mod:`dynapp.kernels.pwtp_cpu` (``pwtp_cpu.cpp``): the CPU kernel, D = 1.  The projection,
  DA and ENoPR (Eq. 1, 5-7, also the leak-free DA) in one pass over the clip forward and one
  backward, A upsampled on the fly; and the relation descriptor of Eq. 3, one pass each way.
  Compiled on first use with the system C++ compiler, loaded through ctypes.

Which code runs is chosen in one place, :func:`dynapp.pwtp.choose_impl`, from
``PWTP(impl="auto" | "reference" | "cpu_fused")``; the module reports what ran in
``PWTP.last_impl``.  A future GPU kernel goes here as its own module with the same two entry
points (``rank_one_dynamic_appearance`` and ``relation_descriptor``) and one more value of ``impl``.
Kernels import nothing from the rest of dynapp.
"""
