#!/usr/bin/env python3
"""Send one message with Python's smtplib to HOST PORT; exit 0 only if the server accepted it.

Usage: smtplib_check.py HOST PORT [--starttls] [--from ADDR] [--to ADDR] [--subject TEXT]

With --starttls the session must be upgraded (STARTTLS must be offered); the server's
certificate is not verified (test certificates). Only meant for servers on loopback.
"""
import argparse
import smtplib
import ssl
import sys
from email.message import EmailMessage


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--starttls", action="store_true", help="require STARTTLS")
    ap.add_argument("--from", dest="sender", default="alice@example.net")
    ap.add_argument("--to", dest="rcpt", default="bob@example.org")
    ap.add_argument("--subject", default="smtplib check")
    a = ap.parse_args()

    msg = EmailMessage()
    msg["From"] = a.sender
    msg["To"] = a.rcpt
    msg["Subject"] = a.subject
    msg.set_content("Sent by Python smtplib.\n.A line that starts with a dot.\n")
    try:
        with smtplib.SMTP(a.host, a.port, local_hostname="smtplib.test", timeout=10) as s:
            s.ehlo()
            if a.starttls:
                if not s.has_extn("starttls"):
                    print("error: STARTTLS not offered", file=sys.stderr)
                    return 1
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s.starttls(context=ctx)
                s.ehlo()
                if s.has_extn("starttls"):
                    print("error: STARTTLS still offered after TLS", file=sys.stderr)
                    return 1
            refused = s.send_message(msg)
            if refused:
                print(f"error: refused recipients: {refused}", file=sys.stderr)
                return 1
            code, _ = s.noop()
            if code != 250:
                print(f"error: NOOP answered {code}", file=sys.stderr)
                return 1
    except (smtplib.SMTPException, OSError) as e:
        print(f"error: {e!r}", file=sys.stderr)
        return 1
    print("ok: message accepted" + (" over TLS" if a.starttls else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
