"""Events posted by relays: our JSON shape (operator only) and Amazon SES through SNS
(signed; checked with a real key and certificate made here)."""

from __future__ import annotations

import base64
import gzip
import json
import ssl
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from tests.bounce_support import BOUNCE_ADDRESS, RETURN_PATH, SECRET, bounce_events, delivery, sent_editions, subscriber
from tests.support.certs import make_certs
from tests.support.http import serve
from worker.bounces.providers import SIGNED_FIELDS, CertificateCache, CertificateUnavailable, fetch_sns_certificate
from worker.ingest.decoding import BodyRefused
from worker.ingest.network import RefusedAddress
from worker.tokens import message_id
from worker.web import create_app

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
CERT_PATH = "/SimpleNotificationService-b95095beb82e8f6a046b3aafc7f4149a.pem"
CERT_URL = "https://sns.eu-west-1.amazonaws.com" + CERT_PATH
TOKEN = "operator-token"
A, B = "alice@example.net", "bob@example.net"


def _key_and_cert(common_name="sns.amazonaws.com"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


KEY, CERT = _key_and_cert()
OTHER_KEY, _ = _key_and_cert()


class Certificates:
    """What the app fetches: SNS's URLs answered by a real HTTPS server on 127.0.0.1 (same
    path, TLS verified against a test CA), through the real fetch; `fetched` is what that
    server was asked for, the only outbound requests."""

    def __init__(self, served):
        self.served = served
        served.add(CERT_PATH, CERT, "application/x-pem-file")

    def __call__(self, url: str) -> bytes:
        return fetch_sns_certificate(self.served.base + urlsplit(url).path, allow_private=True)

    @property
    def fetched(self) -> list[str]:
        return ["https://sns.eu-west-1.amazonaws.com" + path for path in self.served.hits]


@pytest.fixture
def certificates(tmp_path, monkeypatch):
    pairs = make_certs(tmp_path)
    # The fetch's TLS context trusts the CA named by SSL_CERT_FILE, as the feed fetch does.
    monkeypatch.setenv("SSL_CERT_FILE", str(pairs["ca"].cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pairs["good"].cert, pairs["good"].key)
    server, served = serve(tls=context)
    yield Certificates(served)
    server.shutdown()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _sns(kind: str, message: dict | str, *, version="1", key=KEY, topic=TOPIC, url=CERT_URL, **extra) -> dict:
    body = {"Type": kind, "MessageId": extra.pop("MessageId", "6e9c8a0b-0000-4000-8000-000000000001"),
            "TopicArn": topic, "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": extra.pop("Timestamp", None) or _now(), "SignatureVersion": version, "SigningCertURL": url,
            **extra}
    if kind != "Notification":
        body.setdefault("Token", "2336412f37fb687f5d51e6e2425ba1f2")
        body.setdefault("SubscribeURL", "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x")
    signed = "".join(f"{n}\n{body[n]}\n" for n in SIGNED_FIELDS[kind] if n in body)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    body["Signature"] = base64.b64encode(key.sign(signed.encode(), padding.PKCS1v15(), digest)).decode()
    return body


def _ses_bounce(source: str, recipient: str, *, bounce_type="Permanent", status="5.1.1", feedback="fb-1"):
    return {"notificationType": "Bounce",
            "bounce": {"bounceType": bounce_type, "bounceSubType": "General", "feedbackId": feedback,
                       "bouncedRecipients": [{"emailAddress": recipient, "action": "failed", "status": status,
                                              "diagnosticCode": f"smtp; 550 {status} user unknown"}]},
            "mail": {"source": source, "messageId": "0102018e-ses", "destination": [recipient],
                     "commonHeaders": {"messageId": "<x@localhost>"}}}


@pytest.fixture
def web(engine, settings, certificates):
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS, "ses_topic_arn": TOPIC,
                                           "operator_token": SecretStr(TOKEN)})
    app = create_app(settings, engine, sns_certificates=certificates)
    app.testing = True
    return app.test_client(), certificates


def _post_ses(client, body):
    return client.post("/events/ses", data=json.dumps(body), content_type="text/plain; charset=UTF-8")


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_ses_bounce_bounces_the_tagged_delivery(engine, web, version):
    client, certificates = web
    ids = sent_editions(engine, [A, B])
    body = _sns("Notification", _ses_bounce(RETURN_PATH.for_delivery(ids[(1, A)]), A), version=version)
    response = _post_ses(client, body)
    assert response.status_code == 200, response.text
    assert response.json["applied"] == 1
    assert delivery(engine, ids[(1, A)]).state == "bounced" and subscriber(engine, A).status == "bounced"
    assert subscriber(engine, B).status == "active"
    (event,) = bounce_events(engine)
    assert (event.source, event.code, event.kind) == ("ses", "5.1.1", "permanent")
    assert certificates.fetched == [CERT_URL]
    # SNS delivers at least once: the same notification again changes nothing.
    assert _post_ses(client, body).json["duplicates"] == 1 and len(bounce_events(engine)) == 1


def test_an_ses_complaint_and_a_transient_bounce(engine, web):
    client, _ = web
    ids = sent_editions(engine, [A, B])
    complaint = {"notificationType": "Complaint",
                 "complaint": {"feedbackId": "fb-c", "complaintFeedbackType": "abuse",
                               "complainedRecipients": [{"emailAddress": A}]},
                 "mail": {"source": RETURN_PATH.for_delivery(ids[(1, A)])}}
    assert _post_ses(client, _sns("Notification", complaint)).json["applied"] == 1
    assert subscriber(engine, A).status == "complained"
    transient = _ses_bounce(RETURN_PATH.for_delivery(ids[(1, B)]), B, bounce_type="Transient", status="4.2.2",
                            feedback="fb-t")
    assert _post_ses(client, _sns("Notification", transient, MessageId="m2")).json["applied"] == 1
    assert subscriber(engine, B).status == "active" and subscriber(engine, B).transient_bounces == 1
    delivered = {"notificationType": "Delivery", "mail": {"source": BOUNCE_ADDRESS}}
    assert _post_ses(client, _sns("Notification", delivered, MessageId="m3")).json["ignored"] == 1


@pytest.mark.parametrize(("change", "why"), [
    ({"Message": "{\"notificationType\": \"Bounce\"}"}, "bad signature"),
    ({"SigningCertURL": "http://sns.eu-west-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com:8443/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://user@sns.eu-west-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    # S3 buckets called "sns": hosts under amazonaws.com that anyone could own.
    ({"SigningCertURL": "https://sns.s3.amazonaws.com/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://sns.s3-website-us-east-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://sns.s3-eu-west-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    # SNS's host, but not SNS's certificate name, or not the topic's region: no fetch, no cache entry.
    ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com/cert.pem"}, "SigningCertURL"),
    ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"}, "SigningCertURL"),
    ({"SigningCertURL": CERT_URL.replace(".pem", ".pem/x.pem")}, "SigningCertURL"),
    ({"SigningCertURL": CERT_URL + "?x=1"}, "SigningCertURL"),
    ({"SigningCertURL": CERT_URL.replace("eu-west-1", "us-east-1")}, "SigningCertURL"),
    ({"SignatureVersion": "3"}, "SignatureVersion"),
    ({"Signature": "not base64!"}, "unreadable"),
    ({"Type": "Bogus"}, "not an SNS message"),
])
def test_a_tampered_or_unsigned_sns_message_is_refused(engine, web, change, why):
    client, certificates = web
    ids = sent_editions(engine, [A])
    body = {**_sns("Notification", _ses_bounce(RETURN_PATH.for_delivery(ids[(1, A)]), A)), **change}
    response = _post_ses(client, body)
    assert response.status_code == 403 and why in response.text
    assert subscriber(engine, A).status == "active" and bounce_events(engine) == []
    if "SigningCertURL" in change:
        assert certificates.fetched == []  # nothing fetched from a URL that is not SNS's


def test_a_message_signed_by_another_key_or_for_another_topic_is_refused(engine, web):
    client, _ = web
    ids = sent_editions(engine, [A])
    message = _ses_bounce(RETURN_PATH.for_delivery(ids[(1, A)]), A)
    assert _post_ses(client, _sns("Notification", message, key=OTHER_KEY)).status_code == 403
    other_topic = _post_ses(client, _sns("Notification", message, topic=TOPIC + "-other"))
    assert other_topic.status_code == 403 and "not the configured topic" in other_topic.text
    assert subscriber(engine, A).status == "active"


def test_a_subscription_confirmation_is_verified_and_logged_not_followed(engine, web, caplog):
    client, certificates = web
    response = _post_ses(client, _sns("SubscriptionConfirmation", "You have chosen to subscribe"))
    assert response.status_code == 200 and "SubscribeURL" in response.text
    assert "Action=ConfirmSubscription" in caplog.text
    assert certificates.fetched == [CERT_URL]  # the certificate, nothing else
    forged = _sns("SubscriptionConfirmation", "x", key=OTHER_KEY)
    assert _post_ses(client, forged).status_code == 403


def test_the_ses_route_is_off_without_a_topic_and_bounded(engine, settings, certificates):
    app = create_app(settings, engine, sns_certificates=certificates)
    app.testing = True
    assert app.test_client().post("/events/ses", data="{}", content_type="text/plain").status_code == 404
    settings = settings.model_copy(update={"ses_topic_arn": TOPIC})
    app = create_app(settings, engine, sns_certificates=certificates)
    app.testing = True
    client = app.test_client()
    assert client.post("/events/ses", data="x" * (256 * 1024 + 1), content_type="text/plain").status_code == 413
    assert client.post("/events/ses", data="not json", content_type="text/plain").status_code == 400
    assert client.post("/events/ses", data="[1, 2]", content_type="application/json").status_code == 400


def _bounce_for(engine):
    ids = sent_editions(engine, [A])
    return _ses_bounce(RETURN_PATH.for_delivery(ids[(1, A)]), A)


def test_a_message_for_another_topic_is_refused_before_any_certificate_is_fetched(engine, web):
    client, certificates = web
    for n in range(3):
        response = _post_ses(client, _sns("Notification", "{}", topic=f"{TOPIC}-other-{n}",
                                          url=f"https://sns.eu-west-1.amazonaws.com/cert-{n}.pem"))
        assert response.status_code == 403 and response.text == "not the configured topic\n"
    assert certificates.fetched == []


def test_the_certificate_is_fetched_once_for_many_messages(engine, web):
    client, certificates = web
    message = _bounce_for(engine)
    for n in range(5):
        assert _post_ses(client, _sns("Notification", message, MessageId=f"m-{n}")).status_code == 200
    assert certificates.fetched == [CERT_URL]


def test_a_failed_certificate_fetch_is_remembered_too(engine, web, caplog):
    client, certificates = web
    missing = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-00000000000000000000000000000000.pem"
    message = _bounce_for(engine)
    for n in range(4):
        response = _post_ses(client, _sns("Notification", message, MessageId=f"m-{n}", url=missing))
        assert response.status_code == 503 and response.text == "certificate unavailable, try again\n"
    assert certificates.fetched == [missing]
    assert subscriber(engine, A).status == "active"
    assert caplog.text.count("SES event: certificate unavailable: ValueError: HTTP 404 for the certificate") == 4


def test_the_certificate_cache_is_bounded_in_size_and_time(certificates):
    urls = [f"https://sns.eu-west-1.amazonaws.com/c{n}.pem" for n in range(3)]
    for url in urls:
        certificates.served.add(urlsplit(url).path, CERT, "application/x-pem-file")
    small = CertificateCache(certificates, size=2)
    for url in [urls[0], urls[1], urls[0], urls[2], urls[1], urls[0]]:
        assert small(url) == CERT
    # c0 stays while used; c1 was the least recently used when c2 came, so it is fetched again;
    # and c0 was pushed out by c1's return.
    assert certificates.fetched == [urls[0], urls[1], urls[2], urls[1], urls[0]]
    expiring = CertificateCache(certificates, ttl=0, failure_ttl=0)
    expiring(urls[2])
    expiring(urls[2])
    with pytest.raises(CertificateUnavailable, match="HTTP 404"):
        expiring(urls[2].replace("c2", "none"))
    with pytest.raises(CertificateUnavailable, match="HTTP 404"):
        expiring(urls[2].replace("c2", "none"))
    assert certificates.fetched[5:] == [urls[2], urls[2], urls[2].replace("c2", "none"), urls[2].replace("c2", "none")]


@pytest.mark.parametrize(("age", "why"), [
    (timedelta(minutes=61), "is more than an hour old: refused as a replay"),
    (timedelta(days=400), "is more than an hour old: refused as a replay"),
    (-timedelta(minutes=10), "is in the future"),
])
def test_an_old_or_future_message_is_refused_before_any_certificate_is_fetched(engine, web, age, why):
    client, certificates = web
    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    response = _post_ses(client, _sns("Notification", _bounce_for(engine), Timestamp=stamp))
    assert response.status_code == 403 and response.text == f"Timestamp {stamp} {why}\n"
    assert certificates.fetched == [] and subscriber(engine, A).status == "active"


@pytest.mark.parametrize("stamp", ["yesterday", "2025-03-03T12:00:00", "x" * 100])
def test_a_message_without_a_readable_timestamp_is_refused(engine, web, stamp):
    client, certificates = web
    response = _post_ses(client, _sns("Notification", _bounce_for(engine), Timestamp=stamp))
    assert response.status_code == 403 and "Timestamp missing or not an ISO 8601 time" in response.text
    assert certificates.fetched == []


def test_a_message_of_the_last_hour_is_believed(engine, web):
    client, _ = web
    stamp = (datetime.now(UTC) - timedelta(minutes=55)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    response = _post_ses(client, _sns("Notification", _bounce_for(engine), Timestamp=stamp))
    assert response.status_code == 200 and response.json["applied"] == 1


def test_a_compressed_certificate_is_decoded_within_its_bound(engine, web):
    client, certificates = web
    served = certificates.served
    zipped, bomb, stacked = (f"/SimpleNotificationService-{n * 32}.pem" for n in "abc")
    served.add(zipped, gzip.compress(CERT), "application/x-pem-file", headers={"Content-Encoding": "gzip"})
    served.add(bomb, gzip.compress(bytes(1 << 24)), headers={"Content-Encoding": "gzip"})
    served.add(stacked, gzip.compress(gzip.compress(CERT)), headers={"Content-Encoding": "gzip, gzip"})
    base = "https://sns.eu-west-1.amazonaws.com"
    ok = _post_ses(client, _sns("Notification", _bounce_for(engine), url=base + zipped))
    assert ok.status_code == 200 and ok.json["applied"] == 1
    for path in (bomb, stacked):
        assert _post_ses(client, _sns("Notification", "{}", url=base + path)).status_code == 503
    with pytest.raises(BodyRefused, match="decodes to over the 16384 byte limit"):
        fetch_sns_certificate(served.base + bomb, allow_private=True)
    with pytest.raises(BodyRefused, match="2 content codings"):
        fetch_sns_certificate(served.base + stacked, allow_private=True)


def test_the_certificate_is_fetched_only_from_public_addresses(certificates):
    with pytest.raises(RefusedAddress, match="not a public address"):
        fetch_sns_certificate(certificates.served.base + CERT_PATH)
    assert certificates.fetched == []


def test_generic_events_need_the_operator_token(engine, web):
    client, _ = web
    ids = sent_editions(engine, [A, B])
    event = {"type": "bounce", "bounce_type": "permanent", "recipient": A,
             "delivery": RETURN_PATH.for_delivery(ids[(1, A)]), "code": "5.1.1", "diagnostic": "550 unknown",
             "id": "evt-1"}
    assert client.post("/events/bounces", json=event, environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = client.post("/events/bounces", json=event, headers=auth)
    assert response.status_code == 200 and response.json["applied"] == 1
    assert subscriber(engine, A).status == "bounced"
    assert client.post("/events/bounces", json=event, headers=auth).json["duplicates"] == 1
    # By Message-ID, and a complaint by bare tag; a list of events.
    mid = message_id(SECRET, edition_key="weekly-2025-W01", subscriber=subscriber(engine, B).id, domain="localhost")
    batch = [{"type": "bounce", "bounce_type": "transient", "delivery": mid, "recipient": B, "id": "evt-2"},
             {"type": "complaint", "delivery": RETURN_PATH.for_delivery(ids[(1, B)]).split("+")[1].split("@")[0],
              "id": "evt-3"}]
    response = client.post("/events/bounces", json=batch, headers=auth)
    assert response.status_code == 200 and response.json["applied"] == 2
    assert subscriber(engine, B).status == "complained" and subscriber(engine, B).transient_bounces == 1


@pytest.mark.parametrize(("event", "error"), [
    ({"type": "unsubscribe", "recipient": A}, "type"),
    ({"type": "bounce"}, "needs a recipient or a delivery"),
    ({"type": "bounce", "delivery": "bounces+aaaaaaaaaaaaaaaaa@bounce.example.org"}, "not a tag"),
    ({"type": "bounce", "recipient": "x" * 400}, "recipient"),
    ({"type": "bounce", "bounce_type": "soft", "recipient": A}, "bounce_type"),
    ("a string", "event"),
    ({"type": "bounce", "recipient": A, "code": "5.1"}, "code: Value error, not an enhanced status code"),
    ({"type": "bounce", "recipient": A, "code": "abc"}, "code: Value error, not an enhanced status code"),
    ({"type": "bounce", "recipient": A, "code": "5.1.1.1"}, "code: Value error, not an enhanced status code"),
])
def test_a_bad_generic_event_is_refused_with_its_reason_and_the_rest_applied(engine, web, event, error):
    client, _ = web
    ids = sent_editions(engine, [A, B])
    good = {"type": "bounce", "delivery": RETURN_PATH.for_delivery(ids[(1, B)]), "id": "good"}
    response = client.post("/events/bounces", json=[event, good], headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert response.json["applied"] == 1 and response.json["rejected"][0]["index"] == 0
    assert error in response.json["rejected"][0]["error"]
    assert subscriber(engine, A).status == "active" and subscriber(engine, B).status == "bounced"


def test_generic_events_are_bounded(engine, web):
    client, _ = web
    auth = {"Authorization": f"Bearer {TOKEN}"}
    too_many = [{"type": "bounce", "recipient": A}] * 101
    assert client.post("/events/bounces", json=too_many, headers=auth).status_code == 400
    assert client.post("/events/bounces", data="x" * (64 * 1024 + 1), headers=auth,
                       content_type="application/json").status_code == 413
    assert client.post("/events/bounces", data="{", headers=auth, content_type="application/json").status_code == 400


def test_the_ses_route_takes_what_sns_sends_and_nothing_a_browser_form_sends(engine, web):
    """SNS posts its JSON as text/plain (or application/json with a delivery policy): both are
    read, and believed only when signed. A form body is refused before it is read, and so is
    anything a browser marks as another site's."""
    client, certificates = web
    ids = sent_editions(engine, [A])
    signed = _sns("Notification", _ses_bounce(RETURN_PATH.for_delivery(ids[(1, A)]), A))
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        assert client.post("/events/ses", data=json.dumps(signed), content_type=content_type).status_code == 415
    cross_site = client.post("/events/ses", data=json.dumps(signed), content_type="text/plain",
                             headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403 and subscriber(engine, A).status == "active"
    assert client.post("/events/ses", json=signed).status_code == 200
    assert subscriber(engine, A).status == "bounced"
