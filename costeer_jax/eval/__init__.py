"""Evaluation: ROUGE/METEOR, reward model, LLM judge, significance tests and paper-style reports.

Submodules import their heavy dependencies (torch, matplotlib, NLTK's WordNet) lazily, so importing
one metric never pays for another.
"""
