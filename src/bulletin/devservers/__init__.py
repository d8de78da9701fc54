"""Local servers that speak the providers' real wire formats (WhatsApp Cloud API, Twilio, SMTP).

They stand in for the real providers where there is no internet or no account: in tests, in
the chaos harness and benchmarks, and for trying Bulletin out. Each keeps a ledger of what it
accepted and can be told to fail the way the real provider fails.
"""
