"""attnlens.analyzers: functions of a Capture.

``analyze`` / ``summarize_heads`` (table.py), ``head_report`` (report.py), ``find_alignment_heads`` (heads.py),
``align`` (align.py), ``lyrics_alignment_score`` / ``acestep_protocol_score`` (aas.py).
"""
