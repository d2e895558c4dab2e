"""What only a worker process loads: the consumer, message checks, signals, start-up steps.

Producer services never import this package (``import shared.producer`` loads none of it).
"""
