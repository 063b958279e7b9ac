"""The fused IEA layer op (``sr_kernels.iea_attention``): logits, log-softmax, top-k selection and AV in one pass."""
