"""Members' payout methods: bank accounts, UPI ids and PayPal emails, stored encrypted."""
