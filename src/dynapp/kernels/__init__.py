"""How PWTP runs fast, beside its maths in :mod:`dynapp.pwtp`; one concept per module.

* :mod:`~dynapp.kernels.autograd`: the reference path's hand-written backward passes (``A^T x``,
  DA and ENoPR for D = 1, the relation descriptor of Eq. 3).
* :mod:`~dynapp.kernels.normal_equations`: the per-pixel D x D normal equations of Eq. 1.
* :mod:`~dynapp.kernels.bilinear`: Eq. 4's bilinear upsampling as matrix products.
* :mod:`~dynapp.kernels.pwtp_cpu` (``pwtp_cpu.cpp``): the fused CPU kernel, D = 1.  The
  projection, DA and ENoPR (Eq. 1, 5-7, also the leak-free DA) in one pass over the clip forward
  and one backward, A upsampled on the fly; and the relation descriptor of Eq. 3, one pass each
  way.  Compiled on first use with the system C++ compiler, loaded through ctypes.
* :mod:`~dynapp.kernels.choose`: which code runs, the one rule :func:`~dynapp.kernels.choose.choose_impl`
  behind ``PWTP(impl="auto" | "reference" | "cpu_fused")``; ``PWTP.last_impl`` reports what ran.

A future GPU kernel goes here as its own module with the same two entry points
(``rank_one_dynamic_appearance`` and ``relation_descriptor``), one more value of ``impl`` and its
blockers in ``choose``.  Kernels import nothing from the rest of dynapp.
"""
