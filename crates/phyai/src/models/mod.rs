pub mod cosmos3;
