"""Unit tests run natively: python -m unittest (from this folder, with the
SDK on PYTHONPATH; scripts/test runs them)."""

import unittest

import runnel
from runnel.testing import TestHost

import app

EVENT = b'{"storeName": "S1", "storeStatus": "CLOSED"}'


class StoreAlertToEmail(unittest.TestCase):
    def test_stores_an_alert_and_mails_the_list(self):
        host = TestHost(config={"distribution-list": "a@example.com, b@example.com"}, now_ms=1_700_000_000_000)
        host.run(app.handle, EVENT)
        [alert] = host.collections["store_alerts"]
        self.assertEqual(alert["storeName"], "S1")
        self.assertEqual(alert["storeStatus"], "CLOSED")
        self.assertEqual(alert["timestamp"], {"$date": {"$numberLong": "1700000000000"}})
        self.assertEqual(host.mails, [{"to": ["a@example.com", "b@example.com"], "subject": "Store Alert: S1", "body": "CLOSED"}])

    def test_bad_input(self):
        host = TestHost(config={"distribution-list": "a@example.com"})
        for payload in (b"not json", b"[]", b'{"storeName": "", "storeStatus": "OPEN"}', b'{"storeName": "S", "storeStatus": "AJAR"}'):
            with self.assertRaises(runnel.BadInput, msg=payload):
                host.run(app.handle, payload)
        self.assertEqual(host.mails, [])

    def test_gives_up_without_a_distribution_list(self):
        with self.assertRaises(runnel.GiveUp):
            TestHost().run(app.handle, EVENT)

    def test_an_outage_is_retried_and_a_missing_grant_gives_up(self):
        listed = {"distribution-list": "a@example.com"}
        with self.assertRaises(runnel.RetryLater):
            TestHost(config=listed, unavailable={"mail"}).run(app.handle, EVENT)
        with self.assertRaises(runnel.GiveUp):
            TestHost(config=listed, grants=["elsewhere"]).run(app.handle, EVENT)


if __name__ == "__main__":
    unittest.main()
