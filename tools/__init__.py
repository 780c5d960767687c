"""Commands that need more than one package: training (detector and eval), export (detector and runtime),
prediction on image files (runtime's engines and decoder, as the service uses them) and dataset shrinking.

Each package below points one way (backbone <- detector <- eval / runtime <- service); these sit on top.
"""
