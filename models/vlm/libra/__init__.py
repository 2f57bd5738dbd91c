"""Libra (Zhang et al., ACL Findings 2025, ``X-iZhang/Libra``): temporal chest-radiograph
findings from the current and the prior image."""
