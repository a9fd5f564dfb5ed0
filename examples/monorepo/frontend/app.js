export function title(name) { return `Hello, ${name}`; }
