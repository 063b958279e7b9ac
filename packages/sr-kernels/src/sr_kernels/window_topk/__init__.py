"""Query-aware top-k window attention (SSCAN's FGCA): selection, gather, SDPA attention.

See :mod:`sr_kernels.window_topk.op` for the definitions and :mod:`.reference` for the oracles.
"""
