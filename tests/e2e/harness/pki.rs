//! Certificates made for a test (rcgen, independent of the server's code).

use std::net::Ipv4Addr;

/// A CA with the common name `ca_name` and a leaf it issued for `localhost` and 127.0.0.1
/// (rcgen, independent of the server's code), as PEM: (the leaf followed by the CA, the leaf's
/// key, the CA to trust).
pub fn issue_localhost_chain(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (
        format!("{}{}", leaf.pem(), ca.pem()),
        leaf_key.serialize_pem(),
        ca.pem(),
    )
}
