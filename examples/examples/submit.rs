//! `submit`: sends one message through a submission server found by name, with STARTTLS (the
//! certificate verified for that name) and AUTH, as a mail program on a laptop does.
//!
//! ```text
//! SMTP_PASSWORD=s3cret cargo run --example submit -- smtp.example.org alice@example.org bob@example.net < message.eml
//! ```
use std::io::Read as _;

use smtp_client::{
    parse_forward_path, parse_reverse_path, ClientConfig, Connection, Credentials, Envelope,
    Resolver,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, from, to] = &args[..] else {
        return Err("usage: submit HOST FROM TO < message".into());
    };
    let mut message = Vec::new();
    std::io::stdin().read_to_end(&mut message)?;
    // The default TLS mode: STARTTLS required, certificate verified (Mozilla's roots).
    let login = Credentials::new(from.as_str(), std::env::var("SMTP_PASSWORD")?)?;
    let config = ClientConfig::new("laptop.example.org").with_credentials(login);
    let mut conn = Connection::connect_host(&Resolver::system()?, host, 587, &config).await?;
    let envelope = Envelope::new(
        parse_reverse_path(&format!("<{from}>"))?.into_owned(),
        vec![parse_forward_path(&format!("<{to}>"))?.into_owned()],
    );
    let result = conn.send(&envelope, &message).await?;
    println!("{to}: {:?}", result.rcpts[0]);
    conn.quit().await?;
    Ok(())
}
