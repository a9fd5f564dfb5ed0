/// Greets someone; with the `full` feature the greeting is louder.
pub fn greet(name: &str) -> String {
    if cfg!(feature = "full") {
        format!("HELLO, {}!", name.to_uppercase())
    } else {
        format!("hello, {name}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn greets() {
        assert!(super::greet("ada").to_lowercase().contains("ada"));
    }
}
