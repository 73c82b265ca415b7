//! Certificates made at test time: a CA, a server certificate for `127.0.0.1` and `localhost`
//! signed by it, one for another host name signed by it (the hostname-mismatch case), and an
//! unrelated CA (the untrusted case: a client that trusts only it must refuse the server).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The host name of [`TestCerts::other_host_cert`]: not a name any test connects by.
pub const OTHER_HOST: &str = "elsewhere.invalid";

/// PEM files written into one directory.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed both server certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing the brokers present.
    pub other_ca: PathBuf,
    /// The server certificate for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// Its private key (PKCS#8, unencrypted).
    pub server_key: PathBuf,
    /// The key followed by the certificate: a Kafka PEM keystore.
    pub server_keystore: PathBuf,
    /// The certificate for [`OTHER_HOST`] only.
    pub other_host_cert: PathBuf,
    /// Its private key.
    pub other_host_key: PathBuf,
    /// Its key and certificate as a Kafka PEM keystore.
    pub other_host_keystore: PathBuf,
}

impl TestCerts {
    /// Make the certificates and write them into `dir` (which must exist).
    pub fn generate(dir: &Path) -> Result<Self, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("making {what}: {e}");
        let (issuer, ca_pem) = make_ca("mailroom test CA").map_err(|e| fail("the CA", &e))?;
        let (_, other_ca_pem) = make_ca("mailroom unrelated CA").map_err(|e| fail("a CA", &e))?;
        let server = leaf(&issuer, &["127.0.0.1", "localhost"], "localhost")
            .map_err(|e| fail("the server certificate", &e))?;
        let other = leaf(&issuer, &[OTHER_HOST], OTHER_HOST)
            .map_err(|e| fail("the other host's certificate", &e))?;
        let certs = TestCerts {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            server_keystore: dir.join("server-keystore.pem"),
            other_host_cert: dir.join("other-host.pem"),
            other_host_key: dir.join("other-host.key"),
            other_host_keystore: dir.join("other-host-keystore.pem"),
        };
        let files = [
            (&certs.ca, ca_pem),
            (&certs.other_ca, other_ca_pem),
            (&certs.server_cert, server.0.clone()),
            (&certs.server_key, server.1.clone()),
            (&certs.server_keystore, format!("{}{}", server.1, server.0)),
            (&certs.other_host_cert, other.0.clone()),
            (&certs.other_host_key, other.1.clone()),
            (
                &certs.other_host_keystore,
                format!("{}{}", other.1, other.0),
            ),
        ];
        for (path, pem) in files {
            std::fs::write(path, pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(certs)
    }
}

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn make_ca(name: &str) -> Result<(Issuer, String), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let pem = issuer.pem();
    Ok((issuer, pem))
}

/// A certificate for `names` (IP addresses become IP SANs) signed by `ca`: (cert, key) PEM.
fn leaf(ca: &Issuer, names: &[&str], common_name: &str) -> Result<(String, String), rcgen::Error> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
