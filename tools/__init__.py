"""Commands that need more than one package: training (detector and eval) and export (detector and runtime).

Each package below points one way (backbone <- detector <- eval / runtime <- service); these sit on top.
"""
