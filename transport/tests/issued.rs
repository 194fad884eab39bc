//! What `fd-certs` writes to disk loads into the transport's TLS configurations: a node
//! certificate into a client config, a server certificate into a server config.

use fd_certs::pki::CA_CERT_FILE;
use fd_transport::{TlsIdentity, client_config, server_config};

#[test]
fn certificates_written_by_fd_certs_load_into_tls_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    fd_certs::init_ca_dir(dir.path(), "test-federation", false).expect("init");
    let (node_pem, node_key) =
        fd_certs::issue_to_dir(dir.path(), "hospital-a", None).expect("node");
    let sans = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (server_pem, server_key) =
        fd_certs::issue_to_dir(dir.path(), "coordinator", Some(&sans)).expect("server");
    let ca = dir.path().join(CA_CERT_FILE);

    let node = TlsIdentity::load(&ca, &node_pem, &node_key).expect("node identity loads");
    client_config(&node).expect("client config");
    let server = TlsIdentity::load(&ca, &server_pem, &server_key).expect("server identity loads");
    server_config(&server).expect("server config");
}
